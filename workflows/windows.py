"""The change-window gate: before the run starts (wait visibly or refuse, per policy) and
again before each step starts (a run crossing its window's end stops launching and says so).

The policies come from the worker (a local activity, re-read while the run waits); the
verdict is the pure `schema.windows.evaluate` at `workflow.now()`, so replay agrees. The
upstream planner's "Maintenance window scheduled ..." safety check is this gate: it is
answered here, never by the checks activity, and a plan carrying it with no window policy
governing the run is refused (fail closed).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from opsconductor.schema.messages import WaitKind
    from opsconductor.schema.spec import ExecutionSpec
    from opsconductor.schema.windows import (
        WindowPoliciesInput,
        WindowPoliciesResult,
        WindowVerdict,
        evaluate,
        is_window_check,
    )

from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.state import RunState, Wait

WINDOW_GATE = "change-window-gate"  # the workflow.patched id of this gate
POLICY_READ_TIMEOUT = timedelta(seconds=30)
POLICY_READ_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=10),
                                non_retryable_error_types=["WindowPolicyInvalid"])
# A waiting run re-reads the policy at least this often (a changed policy reaches it).
REREAD = timedelta(hours=6)


def _when(verdict: WindowVerdict) -> str:
    return verdict.opens_at.strftime("%Y-%m-%d %H:%M UTC") if verdict.opens_at else "never"


class WindowGate:
    def __init__(self, spec: ExecutionSpec, state: RunState, recorder: Recorder) -> None:
        self.spec = spec
        self.state = state
        self.recorder = recorder
        self.read: WindowPoliciesResult | None = None
        self.closed_noted = False

    @property
    def window_checks(self) -> list[str]:
        return [c.check for c in self.spec.safety_checks
                if isinstance(c.check, str) and is_window_check(c.check)]

    async def _load(self) -> WindowPoliciesResult:
        self.read = await workflow.execute_local_activity(
            "window_policies",
            WindowPoliciesInput(tenant=self.spec.tenant, environment=self.spec.environment,
                                assets=self.spec.assets, tags=self.spec.tags),
            result_type=WindowPoliciesResult, start_to_close_timeout=POLICY_READ_TIMEOUT,
            retry_policy=POLICY_READ_RETRY, summary="change windows")
        return self.read

    def _verdict(self) -> WindowVerdict:
        assert self.read is not None
        return evaluate(self.read.policies, self.read.scope, workflow.now())

    async def before_start(self) -> str | None:
        """Wait until the run's window is open; the error that ends the run if refused."""
        waited = False
        while True:
            try:
                await self._load()
            except (ActivityError, ApplicationError) as err:  # unreadable: opens nothing
                cause = (getattr(err.cause, "message", str(err.cause))
                         if isinstance(err, ActivityError) and err.cause else err.message)
                error = f"change window policy unusable: {cause}"
                self.state.journal.emit("window.refused", message=error)
                return error
            verdict = self._verdict()
            data = {"policies": verdict.policies, "blocking": verdict.blocking,
                    "opens_at": verdict.opens_at.isoformat() if verdict.opens_at else None}
            if self.window_checks and not verdict.policies:
                error = (f"the plan's safety check {self.window_checks[0]!r} asks for a "
                         "maintenance window and no change window policy governs this run "
                         f"({self.spec.environment.value}, tenant {self.spec.tenant})")
                self.state.journal.emit("window.refused", message=error, data=data)
                return error
            if verdict.open:
                self.state.wait = None
                if verdict.policies:
                    self.state.journal.emit(
                        "window.open", message=verdict.reason,
                        data={**data, "waited": waited,
                              "closes_at": verdict.closes_at.isoformat()
                              if verdict.closes_at else None})
                    for check in self.window_checks:
                        self.state.journal.emit(
                            "safety_check.passed", message=f"{check}: {verdict.reason}",
                            data={"stage": "before", "action": "abort", "gate": "window"})
                return None
            if verdict.action == "refuse":
                error = f"refused outside its change window: {verdict.reason}"
                self.state.journal.emit("window.refused", message=error, data=data)
                return error
            text = f"change window opens {_when(verdict)}: {verdict.reason}"
            if not waited or self.state.wait is None or self.state.wait.text != text:
                self.state.wait = Wait(WaitKind.WINDOW, text)
                self.state.journal.emit("window.waiting", message=text, data=data)
                await self.recorder.flush()
            waited = True
            assert verdict.opens_at is not None
            await workflow.sleep(min(verdict.opens_at - workflow.now(), REREAD))

    def step_may_start(self, step_id: str) -> str | None:
        """Checked before each step starts: the error when the window has closed."""
        if self.read is None or not self.read.policies.policies:
            return None
        verdict = self._verdict()
        if verdict.open or not verdict.policies:
            return None
        error = (f"change window closed before step {step_id} could start: {verdict.reason}; "
                 "no further step is launched")
        if not self.closed_noted:
            self.closed_noted = True
            self.state.journal.emit("window.closed", message=error,
                                    data={"step_id": step_id, "blocking": verdict.blocking})
        return error
