"""The step activity: one plan step, from permission check to masked result.

Everything that touches the world for a step happens here, in one activity, so a step costs
one Temporal round trip: RBAC, the fencing check and the "started" mirror write (one
transaction), secret resolution, the executor, masking, and the "finished" mirror write.

`StepActivities` is built once by the worker with what a step needs (settings, pool, RBAC
engine, secret resolver, masker and the log filter's live-secret registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from opsconductor.activities.assets import UnknownAsset, resolve_asset, secret_failure
from opsconductor.activities.attempts import StepAttempt, TargetProcess, attempt_key
from opsconductor.activities.authorization import ActionGate, judged_command
from opsconductor.activities.checks import result_context, run_checks
from opsconductor.activities.executors.base import ProcessRef, StepContext, StepOutcome
from opsconductor.activities.executors.registry import executor_for
from opsconductor.activities.mirror import write_step_and_event
from opsconductor.activities.outputs import (
    OutputTap,
    StoredStream,
    by_reference,
    store_streams,
)
from opsconductor.safety.masking import LiveSecrets, Masker
from opsconductor.safety.rbac import RbacEngine
from opsconductor.safety.secrets import SecretError, SecretResolver
from opsconductor.schema.config import Settings
from opsconductor.schema.enums import StepKind, StepStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import EventRecord, StepRecord, StepResult, StepRunInput
from opsconductor.schema.spec import StepSpec

log = logging.getLogger("opsconductor.step")
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
TIMEOUT_GRACE_SECONDS = 10.0  # the activity's own timeout exceeds the executor's by this much
HOST = socket.gethostname()
FANOUT_CONCURRENCY = 4  # variants of one templated step acting at once
# What a database outage looks like from asyncpg: waited out, never turned into a failure.
DB_OUTAGE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
             asyncpg.OperatorInterventionError)
OUTAGE_MAX_BACKOFF = 2.0
T = TypeVar("T")
Leftover = StepAttempt | TargetProcess  # a group an earlier attempt may have left alive


class DatabaseOutage(Exception):
    """A start or end record could not reach PostgreSQL before the step's deadline."""


async def through_outage(what: str, write: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Retry `write` through a database outage with backoff until `deadline` (monotonic).

    The step's heartbeat runs meanwhile, so a long outage does not look like a dead worker.
    """
    delay = 0.1
    warned = False
    while True:
        try:
            return await write()
        except DB_OUTAGE as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseOutage(f"{what}: PostgreSQL unreachable until the step's "
                                     f"deadline ({type(err).__name__}: {err})") from err
            if not warned:
                log.warning("%s: PostgreSQL unreachable (%s); retrying until the step's "
                            "deadline", what, type(err).__name__)
                warned = True
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, OUTAGE_MAX_BACKOFF)


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, error_type: ErrorType, *, retryable: bool = False,
          **details: Any) -> None:
    raise ApplicationError(message, details or None, type=error_type, non_retryable=not retryable)


async def _run_templated(inp: StepRunInput, ctx: StepContext, gate: ActionGate, pool: Any,
                         timeout: float) -> StepOutcome:
    """Render the step from earlier results and run one variant per asset it names, each
    authorized on its asset and holding that asset's lease while it acts."""
    from opsconductor.activities.fanout import run_fanout

    return await run_fanout(inp.step, inp.prior_outputs,
                            _variant_runner(inp, ctx, gate, pool, timeout),
                            max_concurrency=FANOUT_CONCURRENCY)


async def _run_fleet(inp: StepRunInput, ctx: StepContext, gate: ActionGate, pool: Any,
                     timeout: float, attempt: int, mask: Callable[[str], str],
                     settings: Settings) -> StepOutcome:
    """A fleet step: one variant per target through the fan-out's runner (authorized and
    leased per target), `max_concurrency` at once, stopped past `max_errors`; a row and the
    full output per target as each ends."""
    from opsconductor.activities.fanout import VariantOutcome, aggregate, run_variants
    from opsconductor.activities.fleet import (
        FleetTargetsError,
        TargetRows,
        fleet_targets,
        fleet_variants,
    )
    from opsconductor.activities.service_clients import AssetServiceError

    step = inp.step
    assert step.fleet is not None
    try:
        targets = await fleet_targets(step.fleet, settings)
    except AssetServiceError as err:
        return StepOutcome(ok=False, error=f"step {step.id}: asset service: {err}",
                           error_type=ErrorType.EXECUTOR_ERROR, retryable=True)
    except (FleetTargetsError, OSError, ValueError) as err:
        return StepOutcome(ok=False, error=f"step {step.id}: {err}",
                           error_type=ErrorType.INVALID_STEP, retryable=False)
    total = len(targets)
    allowed = step.fleet.errors_allowed(total)
    rows = TargetRows(pool, inp.execution_id, step.id, attempt, mask)
    done = {"completed": 0, "failed": 0}

    async def ended(variant: StepSpec, outcome: Any) -> None:
        await rows.end(variant, outcome)
        if outcome is not None:
            done["completed" if outcome.ok else "failed"] += 1
            ctx.heartbeat({"fleet": {"total": total, **done}})

    variants = fleet_variants(step, targets)
    earlier = await rows.completed()
    kept = [VariantOutcome(id=v.id, target=v.target, ok=True, exit_code=earlier[v.target],
                           stdout="(completed by an earlier attempt; not run again)")
            for v in variants if v.target in earlier]
    done["completed"] = len(kept)
    try:
        outcomes, not_started = await run_variants(
            [v for v in variants if v.target not in earlier],
            _variant_runner(inp, ctx, gate, pool, timeout),
            max_concurrency=step.fleet.concurrency(total), errors_allowed=allowed,
            on_start=rows.start, on_end=ended)
    except asyncio.CancelledError:  # every running target was stopped with the activity
        with contextlib.suppress(Exception):
            await asyncio.shield(rows.cancelled())
        raise
    await rows.skipped(not_started, f"not started: more than {allowed} target(s) failed")
    order = {t: i for i, t in enumerate(targets)}
    ran = sorted(kept + outcomes, key=lambda o: order.get(o.target or "", 0))
    return aggregate(step, ran, errors_allowed=allowed, skipped=len(not_started))


def _variant_runner(inp: StepRunInput, ctx: StepContext, gate: ActionGate, pool: Any,
                    timeout: float) -> Any:
    """Runs one variant (a fan-out's asset or a fleet's target): authorized on its asset and
    holding that asset's lease while it acts."""
    from opsconductor.activities.fanout import executor_variant_runner
    from opsconductor.safety import mutex
    from opsconductor.safety.rbac import audit_many

    async def authorize(variant: StepSpec, asset: Any) -> str | None:
        command_step = variant.kind == StepKind.COMMAND
        verdict = await gate.decide(
            tool=variant.tool, resource=asset.id if asset is not None else variant.target,
            command=judged_command(variant),
            inputs=variant.inputs if command_step else None)
        await audit_many(pool, verdict.entries)
        return None if verdict.allowed else verdict.reason

    @contextlib.asynccontextmanager
    async def leased(variant: StepSpec, asset: Any) -> AsyncIterator[None]:
        key = asset.id if asset is not None else None
        if key is None or key in inp.fencing_tokens:
            yield  # this machine, or an asset the execution already holds
            return
        await mutex.acquire(pool, inp.tenant, [key], inp.execution_id, f"{HOST}:{variant.id}",
                            inp.lease_seconds, timeout=timeout)
        try:
            yield
        finally:
            await mutex.release(pool, inp.tenant, inp.execution_id, [key])

    async def precheck(variant: StepSpec, asset: Any) -> StepOutcome | None:
        """A fleet step's preconditions hold on each target, or that target does not act."""
        if inp.step.fleet is None or not inp.step.preconditions:
            return None
        results = await run_checks(inp.step.preconditions,
                                   context={"steps": inp.prior_outputs}, asset=asset, gate=gate)
        failed = [r for r in results if not r.passed]
        if not failed:
            return None
        return StepOutcome(ok=False, error=f"precondition failed on {variant.target}: "
                                           f"{failed[0].expr}: {failed[0].detail}",
                           error_type=ErrorType.PRECONDITION_FAILED, retryable=False,
                           output={"checks": [{"kind": "precondition", **r.to_dict()}
                                              for r in results]})

    async def postcheck(variant: StepSpec, asset: Any, outcome: StepOutcome) -> StepOutcome:
        """Success criteria hold on each variant's own result: one host's failure is that
        host's, not hidden in (or blamed on) the step's combined output."""
        checks = await judge_success(variant, outcome, inp.prior_outputs, asset, gate,
                                     where=f" on {variant.target or 'localhost'}")
        if checks:
            outcome.output = {"result": outcome.output, "checks": checks}
        return outcome

    def process_hook(variant: StepSpec) -> Callable[[ProcessRef], Awaitable[None]]:
        """Each variant's process group recorded as its own row of the attempt."""
        async def on_process(ref: ProcessRef) -> None:
            from opsconductor.activities.attempts import record_process

            where = f"asset:{ref.host}" if ref.host else f"local:{HOST}"
            try:
                await through_outage(
                    f"step {variant.id} process record",
                    lambda: record_process(pool, inp.execution_id, inp.step.id, ctx.attempt,
                                           process_host=where, pgid=ref.pgid,
                                           proc_start=ref.start_ticks,
                                           target=variant.target or variant.id),
                    time.monotonic() + 5.0)
            except DatabaseOutage as err:
                log.warning("%s", err)

        return on_process

    return executor_variant_runner(ctx, authorize=authorize, guard=leased, precheck=precheck,
                                   postcheck=postcheck, process_hook=process_hook)


async def judge_success(step: StepSpec, outcome: StepOutcome, prior: Any, asset: Any,
                        gate: ActionGate, *, where: str = "") -> list[dict[str, Any]]:
    """Run the step's success criteria on an outcome that succeeded; a failed one turns the
    outcome failed (retryable only for an idempotent step). Returns the checks' records."""
    if not outcome.ok or not step.success_criteria:
        return []
    context = {**result_context(outcome), "steps": prior}
    results = await run_checks(step.success_criteria, context=context, asset=asset, gate=gate)
    failed = [r for r in results if not r.passed]
    if failed:
        outcome.ok = False
        outcome.error = f"success criterion failed{where}: {failed[0].expr}: {failed[0].detail}"
        outcome.error_type = ErrorType.SUCCESS_CRITERION_FAILED
        outcome.retryable = step.idempotent
    return [{"kind": "success_criterion", **r.to_dict()} for r in results]


def _gate(inp: StepRunInput, pool: Any, engine: RbacEngine) -> ActionGate:
    return ActionGate(engine=engine, pool=pool, tenant=inp.tenant, actor=inp.actor,
                      environment=inp.environment.value, execution_id=inp.execution_id,
                      step_id=inp.step.id)


async def _authorize(inp: StepRunInput, gate: ActionGate) -> list[Any]:
    """Decide now, at the moment of action, on what the step really runs (a probe, or free
    text, which is authorized as `shell` too); the audit rows are written with the start
    record (a denial is audited at once)."""
    from opsconductor.safety import rbac

    step = inp.step
    command_step = step.kind == StepKind.COMMAND
    verdict = await gate.decide(tool=step.tool, resource=step.target,
                                command=judged_command(step),
                                inputs=step.inputs if command_step else None)
    if not verdict.allowed:
        await rbac.audit_many(gate.pool, verdict.entries)
        _fail(verdict.reason, ErrorType.RBAC_DENIED)
    return verdict.entries


def _recorded_result(inp: StepRunInput, attempt: int,
                     prior: list[StepAttempt]) -> StepResult | None:
    """The result an earlier attempt recorded, when the step must not act again.

    Within one execution every step's finished attempt counts (Temporal lost its result);
    across linked runs only a non-idempotent step's (its effect must happen once).
    """
    for a in prior:
        if a.outcome == "succeeded" and a.result and (
                not inp.step.idempotent or a.execution_id == inp.execution_id):
            return StepResult.model_validate({**a.result, "attempts": attempt})
    return None


async def _record_start(inp: StepRunInput, attempt: int, started: datetime, pool: Any,
                        audit: Any) -> tuple[StepResult | None, list[Leftover]]:
    """Fencing check, the attempt guard, RBAC audit and the 'running' row: one transaction,
    so a step never acts without all of them recorded.

    Returns the result an earlier attempt recorded (then nothing acts), else the earlier
    attempts whose process group may still be alive (stopped before this one acts).
    """
    from opsconductor.activities.attempts import (
        prior_attempts,
        resolve_unfinished,
        start_with_step,
    )
    from opsconductor.safety.mutex import LockLost as LockLostError
    from opsconductor.safety.mutex import check_fencing, renew
    from opsconductor.safety.rbac import audit_many

    step = inp.step
    async with pool.acquire() as conn, conn.transaction():
        if inp.fencing_tokens:
            try:
                await renew(conn, inp.tenant, list(inp.fencing_tokens), inp.execution_id,
                            inp.lease_seconds)
            except LockLostError as err:
                _fail(f"{err}; step {step.id} did not act", ErrorType.LOCK_LOST)
        for asset, token in sorted(inp.fencing_tokens.items()):
            if not await check_fencing(conn, inp.tenant, asset, inp.execution_id, token):
                _fail(f"lock lost: execution {inp.execution_id} no longer holds asset {asset!r} "
                      f"(fencing token {token}); step {step.id} did not act", ErrorType.LOCK_LOST)
        prior = await prior_attempts(conn, inp.execution_id, step.id, exclude_attempt=attempt)
        recorded = _recorded_result(inp, attempt, prior)
        if recorded is not None:
            source = next(a for a in prior if a.outcome == "succeeded" and a.result)
            now = _now()
            await write_step_and_event(
                conn, inp.execution_id,
                StepRecord(step_id=step.id, status=StepStatus.COMPLETED, attempts=attempt,
                           started_at=recorded.started_at, completed_at=recorded.completed_at,
                           exit_code=recorded.exit_code, output=_mirror_output(recorded)),
                EventRecord(key=f"step:{step.id}:recovered:{attempt}", type="step.recovered",
                            step_id=step.id, at=now,
                            message=f"attempt {source.attempt} of execution "
                                    f"{source.execution_id} already finished; its recorded "
                                    f"result is returned and the step is not run again",
                            data={"attempt": attempt, "recorded_attempt": source.attempt,
                                  "recorded_execution_id": source.execution_id}))
            return recorded, []
        if not step.idempotent:
            if inp.override_unknown_outcome:
                await resolve_unfinished(conn, inp.execution_id, step.id, "retry", inp.actor)
                prior = await prior_attempts(conn, inp.execution_id, step.id,
                                             exclude_attempt=attempt)
            stale = next((a for a in prior if a.may_have_acted), None)
            if stale is not None:
                _fail(f"step {step.id}: its outcome is unknown: {stale.evidence()}; the step is "
                      f"not idempotent, so it is not run again until an operator resolves it "
                      f"(retry, skip or fail)",
                      ErrorType.UNKNOWN_OUTCOME, stale_attempt=stale.attempt, attempt=attempt,
                      stale_execution_id=stale.execution_id, stale_worker=stale.worker,
                      stale_started_at=stale.started_at.isoformat())
        if audit:
            await audit_many(conn, audit)
        await start_with_step(
            conn, inp.execution_id, step.id, attempt, WORKER_ID,
            target=step.target or "localhost",
            step=StepRecord(step_id=step.id, status=StepStatus.RUNNING, attempts=attempt,
                            started_at=started),
            event=EventRecord(key=f"step:{step.id}:running:{attempt}", type="step.status",
                              step_id=step.id,
                              from_status="pending" if attempt == 1 else "running",
                              to_status="running",
                              message=f"attempt {attempt} started on {WORKER_ID}",
                              at=started, data={"attempt": attempt, "worker": WORKER_ID}))
    return None, [*(a for a in prior if a.pgid and a.stopped_at is None),
                  *(t for a in prior for t in a.targets)]


async def _stop_leftovers(inp: StepRunInput, attempt: int, leftovers: list[Leftover],
                          asset: Any, pool: Any, settings: Settings | None = None) -> None:
    """Before this attempt acts, stop any process group an earlier attempt left alive.

    Local groups on this host are checked by their leader's start time (a reused pid is
    never signalled); remote ones are stopped over SSH the same way, and a remote host that
    cannot be asked makes the attempt fail retryably, without acting. A local group on another
    worker's machine died with that worker (its supervisor's death signal); it is noted.
    A fleet's (or fan-out's) targets each left their own group (`TargetProcess`): every one
    is stopped, a remote one on its own asset.
    """
    from opsconductor.activities.attempts import TargetProcess, mark_stopped, mark_target_stopped
    from opsconductor.activities.executors.local_command import stop_leftover_group

    for old in leftovers:
        assert old.pgid is not None and old.process_host is not None
        kind, _, where = old.process_host.partition(":")
        if (kind == "asset" and isinstance(old, TargetProcess) and settings is not None
                and getattr(asset, "id", None) != where):
            try:
                asset = await resolve_asset(old.target, settings)
            except UnknownAsset:
                asset = None
        if kind == "local" and where == HOST:
            killed = await stop_leftover_group(old.pgid, old.proc_start)
        elif kind == "asset" and asset is not None and getattr(asset, "id", None) == where:
            from opsconductor.activities.executors.ssh import (
                SshError,
                ssh_connection,
                stop_remote_leftover,
            )

            try:
                answer = await stop_remote_leftover(await ssh_connection(asset), old.pgid,
                                                    old.proc_start)
            except SshError as err:
                _fail(f"step {inp.step.id}: attempt {old.attempt}'s process group {old.pgid} "
                      f"on {where} may still run and cannot be stopped ({err}); not acting",
                      ErrorType.SSH_CONNECT_ERROR, retryable=True)
            killed = answer == "killed"
        else:
            log.warning("step %s: attempt %d's process group %d ran on %s, which this worker "
                        "cannot signal; its supervisor stops it with its worker", inp.step.id,
                        old.attempt, old.pgid, old.process_host)
            continue
        if killed:
            log.warning("step %s: stopped process group %d left by attempt %d on %s",
                        inp.step.id, old.pgid, old.attempt, old.process_host)
        detail = (f"process group {old.pgid} " + ("stopped" if killed else "already gone")
                  + f" before attempt {attempt}")
        if isinstance(old, TargetProcess):
            await mark_target_stopped(pool, old, f"{old.target}: {detail}")
        else:
            await mark_stopped(pool, old.execution_id, old.step_id, old.attempt, detail)


async def _record_end(inp: StepRunInput, attempt: int, result: StepResult, final: bool,
                      pool: Any, streams: list[StoredStream] | None = None, *,
                      retryable: bool = False) -> None:
    """The step row, its event, the attempt's outcome (with its result, and for a failure
    whether it is retryable: a retry that waited for this attempt answers the same) and the
    full output streams, in one transaction."""
    from opsconductor.activities.attempts import finish_with_step, record_attempt_finished

    step = inp.step
    status = result.status if final or result.status is StepStatus.COMPLETED \
        else StepStatus.RUNNING
    record = StepRecord(
        step_id=step.id, status=status, attempts=attempt,
        completed_at=result.completed_at if status is not StepStatus.RUNNING else None,
        exit_code=result.exit_code, output=_mirror_output(result), error=result.error)
    event = EventRecord(
        key=f"step:{step.id}:{result.status.value}:{attempt}",
        type="step.status" if status is not StepStatus.RUNNING else "step.attempt_failed",
        step_id=step.id, from_status="running", to_status=status.value,
        message=result.error or f"attempt {attempt} {result.status.value}",
        at=result.completed_at, data={"attempt": attempt, "exit_code": result.exit_code,
                                      "duration_ms": result.duration_ms})
    outcome = {StepStatus.COMPLETED: "succeeded", StepStatus.TIMEOUT: "timeout"}.get(
        result.status, "failed")
    recorded = (result.model_dump(mode="json") if outcome == "succeeded"
                else {**result.model_dump(mode="json"), RETRYABLE_KEY: retryable})
    if not streams:  # the common case: one statement, no transaction block
        await finish_with_step(pool, inp.execution_id, step.id, attempt, outcome,
                               step=record, event=event, result=recorded)
        return
    async with pool.acquire() as conn, conn.transaction():
        await record_attempt_finished(conn, inp.execution_id, step.id, attempt, outcome,
                                      result=recorded)
        await write_step_and_event(conn, inp.execution_id, record, event)
        await store_streams(conn, streams)


def _mirror_output(result: StepResult) -> dict[str, Any]:
    return {"stdout": result.stdout, "stderr": result.stderr, "output": result.output,
            "duration_ms": result.duration_ms,
            "outputs": {k: v.model_dump(mode="json") for k, v in result.outputs.items()}}


@contextlib.asynccontextmanager
async def _leases_renewed(inp: StepRunInput, pool: Any) -> AsyncIterator[asyncio.Event | None]:
    """While a step runs on locked assets, keep their leases alive."""
    if not inp.fencing_tokens:
        yield None
        return
    from opsconductor.safety.mutex import keep_renewed

    async with keep_renewed(pool, inp.tenant, list(inp.fencing_tokens), inp.execution_id,
                            inp.lease_seconds) as lost:
        yield lost


async def _heartbeat_forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat()


class StepActivities:
    """`run_step`, with the dependencies the worker built once."""

    def __init__(self, *, settings: Settings, pool: Any, rbac: RbacEngine,
                 secrets: SecretResolver, masker: Masker, live: LiveSecrets) -> None:
        self.settings = settings
        self.pool = pool
        self.rbac = rbac
        self.secrets = secrets
        self.masker = masker
        self.live = live  # values registered here are masked in every log record
        from opsconductor.activities.attempts import AttemptLiveness

        # A running attempt's advisory lock: a retry Temporal sends while it still runs waits.
        self.liveness = AttemptLiveness(pool)
        # This worker's running step bodies, so a retry here can stop a ridden-out attempt.
        self.running: dict[tuple[str, str, int], asyncio.Task[StepOutcome]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, pool: Any, *,
                      live: LiveSecrets | None = None) -> StepActivities:
        """Built with its own engine, resolver and masker (the worker shares them instead)."""
        return cls(settings=settings, pool=pool, rbac=RbacEngine.from_settings(settings),
                   secrets=SecretResolver.from_settings(settings),
                   masker=Masker.from_settings(settings), live=live or LiveSecrets())

    async def _await_live_attempts(self, inp: StepRunInput, attempt: int, asset: Any,
                                   deadline: float) -> None:
        """Before acting, wait for an earlier attempt of this execution that still runs on a
        live worker (Temporal gave up on it during an outage). Its recorded end then decides:
        a success is returned by `_record_start`, a failure is raised here as it would have
        been; one still running at `deadline` is left to the guard (a pause)."""
        from opsconductor.activities.attempts import live_open_attempts, prior_attempts

        step = inp.step

        async def live() -> list[StepAttempt]:
            try:
                return await live_open_attempts(self.pool, inp.execution_id, step.id,
                                                exclude_attempt=attempt)
            except DB_OUTAGE:
                return []

        running = await live()
        if not running:
            return
        awaited = {a.attempt for a in running}
        log.warning("step %s attempt %d: attempt(s) %s still run on a live worker; waiting for "
                    "their recorded end instead of acting", step.id, attempt,
                    ", ".join(f"{a.attempt} on {a.worker}" for a in running))
        try:
            while running and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                running = await live()
        except asyncio.CancelledError:  # the workflow's cancel: the awaited command stops too
            await self._stop_awaited(inp, attempt, awaited, asset)
            raise
        ended = [a for a in await prior_attempts(self.pool, inp.execution_id, step.id,
                                                 exclude_attempt=attempt)
                 if a.execution_id == inp.execution_id and a.attempt in awaited]
        for a in ended:
            if a.outcome in ("failed", "timeout") and a.result:
                raw = dict(a.result)
                retryable = bool(raw.pop(RETRYABLE_KEY, False))
                result = StepResult.model_validate({**raw, "attempts": attempt})
                raise ApplicationError(result.error or "step failed", result,
                                       type=result.error_type or ErrorType.STEP_FAILED,
                                       non_retryable=not retryable)

    async def _stop_awaited(self, inp: StepRunInput, attempt: int, awaited: set[int],
                            asset: Any) -> None:
        """Stop the attempts a cancelled retry was waiting for: here by their task, on
        another worker by their recorded process group (as leftovers are stopped)."""
        from opsconductor.activities.attempts import prior_attempts

        for n in awaited:
            task = self.running.get((inp.execution_id, inp.step.id, n))
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(task), 30)
        with contextlib.suppress(Exception):
            awaited_open = [a for a in await prior_attempts(
                self.pool, inp.execution_id, inp.step.id, exclude_attempt=attempt)
                if a.attempt in awaited and a.finished_at is None]
            rest: list[Leftover] = [a for a in awaited_open if a.pgid and a.stopped_at is None]
            rest += [t for a in awaited_open for t in a.targets]
            if rest:
                await asyncio.shield(_stop_leftovers(inp, attempt, rest, asset, self.pool,
                                                     self.settings))

    @activity.defn(name="run_step")
    async def run_step(self, inp: StepRunInput) -> StepResult:
        # Heartbeat from the first instant: waiting for a pool connection under load must not
        # look like a dead worker.
        beat = asyncio.create_task(_heartbeat_forever(
            max(0.2, inp.policy.heartbeat_timeout_seconds / 4)))
        try:
            return await self._run_step(inp)
        finally:
            beat.cancel()

    async def _run_step(self, inp: StepRunInput) -> StepResult:
        # Attempt numbers run on across activity invocations: after an operator's retry, the
        # new invocation's first attempt continues the step's count instead of reusing 1.
        local_attempt = activity.info().attempt
        attempt = inp.attempt_offset + local_attempt
        step = inp.step
        pool = self.pool
        t0 = time.monotonic()
        budget = activity.info().start_to_close_timeout
        total = budget.total_seconds() if budget else \
            inp.policy.step_timeout_seconds + TIMEOUT_GRACE_SECONDS
        timeout = min(step.timeout_seconds or inp.policy.step_timeout_seconds,
                      inp.policy.step_timeout_seconds)
        # Nothing has acted until the start record: an outage before it is waited out for
        # up to half the command's time (it then runs with what is left of the deadline).
        start_deadline = t0 + max(2.0, total - timeout / 2 - 3.0)
        gate = _gate(inp, pool, self.rbac)
        audit = None
        # A templated step's hosts are known only once its placeholders are rendered, and a
        # fleet's are many: each variant is authorized (and leased) on its own asset.
        if inp.rbac_required and not step.templated and step.fleet is None:
            try:
                audit = await through_outage(f"step {step.id} permission check",
                                             lambda: _authorize(inp, gate), start_deadline)
            except DatabaseOutage as err:
                _fail(f"{err}; step {step.id} did not act", ErrorType.DATABASE_UNAVAILABLE,
                      retryable=True)

        try:
            asset = await resolve_asset(step.target, self.settings)
        except UnknownAsset as err:
            _fail(str(err), ErrorType.UNKNOWN_ASSET)

        try:
            inputs, secret_values = await self.secrets.resolve(step.inputs)
        except SecretError as err:
            error_type, retryable = secret_failure(err)
            _fail(f"step {step.id}: {err}", error_type, retryable=retryable)
        masker = self.masker.with_secrets(secret_values)
        self.live.register(secret_values)
        checks: list[dict[str, Any]] = []
        if step.preconditions and step.fleet is None:  # a fleet checks them per target
            results = await run_checks(step.preconditions, context={"steps": inp.prior_outputs},
                                       asset=asset, gate=gate)
            checks += [{"kind": "precondition", **r.to_dict()} for r in results]
            failed = [r for r in results if not r.passed]
            if failed:
                self.live.forget(secret_values)
                _fail(masker.mask_text(f"step {step.id} precondition failed: {failed[0].expr}: "
                                       f"{failed[0].detail}"), ErrorType.PRECONDITION_FAILED)

        try:
            await self._await_live_attempts(inp, attempt, asset, start_deadline)
        except BaseException:
            self.live.forget(secret_values)
            raise
        key = attempt_key(inp.execution_id, step.id, attempt)
        alive = await self.liveness.hold(key)
        started = _now()
        try:
            recorded, leftovers = await through_outage(
                f"step {step.id} start record",
                lambda: _record_start(inp, attempt, started, pool, audit), start_deadline)
        except BaseException as err:
            await self.liveness.release(key)
            self.live.forget(secret_values)
            if isinstance(err, DatabaseOutage):
                _fail(f"{err}; step {step.id} did not act", ErrorType.DATABASE_UNAVAILABLE,
                      retryable=True)
            raise
        try:
            return await self._act(inp, attempt, asset, masker, inputs, secret_values, checks,
                                   gate, recorded, leftovers, started, t0, total, timeout,
                                   local_attempt, alive)
        finally:
            await self.liveness.release(key)

    async def _act(self, inp: StepRunInput, attempt: int, asset: Any, masker: Masker,
                   inputs: Any, secret_values: Any, checks: list[dict[str, Any]], gate: ActionGate,
                   recorded: StepResult | None, leftovers: list[Leftover],
                   started: datetime, t0: float, total: float, timeout: float,
                   local_attempt: int, alive: bool) -> StepResult:
        """From the start record to the end record: the command itself."""
        step = inp.step
        pool = self.pool
        # A long outage at the start eats into the command's time, never past the deadline.
        timeout = max(1.0, min(timeout, t0 + total - time.monotonic() - 5.0))
        if recorded is not None:
            self.live.forget(secret_values)
            log.info("step %s attempt %d: returning the result an earlier attempt recorded",
                     step.id, attempt)
            return recorded
        if leftovers:
            try:
                await _stop_leftovers(inp, attempt, leftovers, asset, pool, self.settings)
            except BaseException as err:
                self.live.forget(secret_values)
                await _close_unacted(inp, attempt, pool, err)
                raise

        async def on_process(ref: ProcessRef) -> None:
            """Record where the command runs; an outage only delays it (bounded)."""
            from opsconductor.activities.attempts import record_process

            where = f"asset:{ref.host}" if ref.host else f"local:{HOST}"
            try:
                await through_outage(
                    f"step {step.id} process record",
                    lambda: record_process(pool, inp.execution_id, step.id, attempt,
                                           process_host=where, pgid=ref.pgid,
                                           proc_start=ref.start_ticks),
                    time.monotonic() + 5.0)
            except DatabaseOutage as err:
                log.warning("%s", err)

        ctx = StepContext(
            execution_id=inp.execution_id, workflow_id=inp.workflow_id, tenant=inp.tenant,
            environment=inp.environment.value, step=step, inputs=inputs, timeout=timeout,
            asset=asset, prior_outputs=inp.prior_outputs, attempt=attempt,
            heartbeat=activity.heartbeat, settings=self.settings, secrets=self.secrets,
            on_process=on_process, gate=gate)
        tap = OutputTap(pool, inp.execution_id, step.id, attempt, masker.mask_text)
        ctx.on_output = tap.feed  # live output for `opsconductor logs --follow`
        async def body() -> StepOutcome:
            async with _leases_renewed(inp, pool) as lost:
                if step.templated:
                    outcome = await _run_templated(inp, ctx, gate, pool, timeout)
                elif step.fleet is not None:
                    outcome = await _run_fleet(inp, ctx, gate, pool, timeout, attempt,
                                               masker.mask_text, self.settings)
                else:
                    outcome = await executor_for(step.kind).run(ctx)
            if lost is not None and lost.is_set():
                outcome = StepOutcome(ok=False, error="lock lost while the step ran: another "
                                      "execution may now hold the asset",
                                      error_type=ErrorType.LOCK_LOST, retryable=False,
                                      exit_code=outcome.exit_code, stdout=outcome.stdout,
                                      stderr=outcome.stderr)
            return outcome

        work = asyncio.ensure_future(body())
        ident = (inp.execution_id, step.id, attempt)
        self.running[ident] = work
        try:
            outcome = await _ride_out(work, step.id, attempt, alive)
        except asyncio.CancelledError:
            why = _interruption()
            await _record_cancelled(inp, attempt, pool, interrupted=why)
            if why is not None:
                # Not the workflow's cancel: a failure Temporal retries, so the next attempt
                # applies the guard (a non-idempotent step pauses; it may have acted).
                raise ApplicationError(
                    f"step {step.id} attempt {attempt} was interrupted ({why}); its command "
                    f"was stopped midway", {"attempt": attempt},
                    type=ErrorType.STEP_INTERRUPTED) from None
            raise
        except Exception as err:  # an executor bug must still produce an honest, masked failure
            outcome = StepOutcome(ok=False, error=f"{type(err).__name__}: {err}",
                                  error_type=ErrorType.EXECUTOR_ERROR)
        finally:
            self.running.pop(ident, None)
            await tap.close()
            self.live.forget(secret_values)

        if outcome.error_type == ErrorType.STEP_TIMEOUT and not step.idempotent:
            # Killed midway, it may have acted: running it again could do it twice.
            outcome.retryable = False
            outcome.error = (f"{outcome.error}; not retried: the step is not idempotent and "
                             "may have acted before it was stopped")
        if not step.templated and step.fleet is None:  # those judged each variant's own
            checks += await judge_success(step, outcome, inp.prior_outputs, asset, gate)
        if checks:
            outcome.output = {"result": outcome.output, "checks": checks}
        completed = _now()
        result = StepResult(
            step_id=step.id,
            status=StepStatus.COMPLETED if outcome.ok else (
                StepStatus.TIMEOUT if outcome.error_type == ErrorType.STEP_TIMEOUT
                else StepStatus.FAILED),
            attempts=attempt, exit_code=outcome.exit_code,
            stdout=masker.mask_text(outcome.stdout), stderr=masker.mask_text(outcome.stderr),
            output=masker.mask(outcome.output),
            error=masker.mask_text(outcome.error) if outcome.error else None,
            error_type=outcome.error_type, started_at=started, completed_at=completed,
            duration_ms=(completed - started).total_seconds() * 1000)
        # Full output to Postgres, a bounded and escaped summary to Temporal and the mirror.
        result, streams = by_reference(result, inp.execution_id,
                                       excerpt_chars=self.settings.output_excerpt_chars)
        final = outcome.ok or not outcome.retryable or local_attempt >= inp.policy.max_attempts
        try:
            await through_outage(f"step {step.id} end record",
                                 lambda: _record_end(inp, attempt, result, final, pool,
                                                     streams, retryable=outcome.retryable),
                                 t0 + total - 1.0)
        except DatabaseOutage as err:
            # Temporal still gets the true result; the attempt stays open, so a retry that
            # Temporal might send after losing it pauses instead of acting again.
            log.error("%s; attempt %d stays open (its outcome unknown to a later retry)",
                      err, attempt)
        if not outcome.ok:
            log.warning("step %s attempt %d failed: %s", step.id, attempt, result.error)
            raise ApplicationError(result.error or "step failed", result,
                                   type=outcome.error_type or ErrorType.STEP_FAILED,
                                   non_retryable=not outcome.retryable)
        return result


async def _close_unacted(inp: StepRunInput, attempt: int, pool: Any,
                         err: BaseException) -> None:
    """This attempt stopped before it acted: closed `failed`, so no later retry mistakes it
    for one that may have acted (best effort: left open, it only makes a retry pause)."""
    from opsconductor.activities.attempts import record_attempt_finished

    with contextlib.suppress(Exception):
        await record_attempt_finished(pool, inp.execution_id, inp.step.id, attempt, "failed",
                                      f"did not act: {str(err)[:500]}")


# Temporal gave up on the attempt, yet its worker is alive: a server restart or rolling
# upgrade timed it out while its heartbeats could not arrive.
SERVER_GAVE_UP = ("the server timed it out", "the server no longer knows it")
RETRYABLE_KEY = "_retryable"  # beside a failed attempt's recorded result
WATCH_SECONDS = 1.0  # how often such an attempt checks that its workflow still wants it


async def _ride_out(work: asyncio.Future[StepOutcome], step_id: str, attempt: int,
                    alive: bool) -> StepOutcome:
    """Await the step body; a cancel stops it (the workflow's, a worker shutdown) — except the
    first one that only says Temporal gave up on a live attempt: the command then runs on and
    records its end, which the retry Temporal sends waits for (`_await_live_attempts`).
    Without the liveness lock (`alive`) a retry could not tell, so the command stops."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        why = _interruption()
        task = asyncio.current_task()
        if alive and why in SERVER_GAVE_UP and not work.cancelled() and task is not None:
            task.uncancel()
            log.warning("step %s attempt %d: %s (a Temporal restart or upgrade?); its command "
                        "runs on, and the retry waits for its recorded result", step_id,
                        attempt, why)
            watch = asyncio.ensure_future(_watch_workflow(activity.info()))
            try:
                racing: set[asyncio.Future[Any]] = {work, watch}
                done, _ = await asyncio.wait(racing,
                                             return_when=asyncio.FIRST_COMPLETED)
                if work in done:
                    return work.result()
                log.warning("step %s attempt %d: %s; its command is stopped", step_id, attempt,
                            watch.result())
            except asyncio.CancelledError:
                pass
            finally:
                watch.cancel()
        work.cancel()
        try:
            await work
        except (asyncio.CancelledError, Exception):
            pass
        raise asyncio.CancelledError from None


async def _watch_workflow(info: activity.Info) -> str:
    """While an attempt Temporal gave up on runs on, its workflow may move on without it (a
    cancel while the retry waits for its backoff, attempts exhausted, the run ended): say
    why, so the command stops. An unreachable Temporal only means: keep watching."""
    from temporalio.api.enums.v1 import PendingActivityState
    from temporalio.client import WorkflowExecutionStatus

    handle = activity.client().get_workflow_handle(info.workflow_id or "",
                                                   run_id=info.workflow_run_id)
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        try:
            desc = await asyncio.wait_for(handle.describe(), 10)
        except Exception:
            continue
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return "its workflow run ended"
        mine = [p for p in desc.raw_description.pending_activities
                if p.activity_id == info.activity_id]
        if not mine:
            return "its workflow no longer waits for the step"
        if mine[0].state == PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED:
            return "its workflow cancelled the step"


def _interruption() -> str | None:
    """Why this activity is cancelled when the workflow did not ask for it, else None."""
    details = activity.cancellation_details()
    if details is None or details.cancel_requested:
        return None
    if details.worker_shutdown:
        return "its worker shut down"
    if details.timed_out:
        return "the server timed it out"
    if details.not_found:
        return "the server no longer knows it"
    return "paused" if details.paused else "reset" if details.reset else None


async def _record_cancelled(inp: StepRunInput, attempt: int, pool: Any, *,
                            interrupted: str | None = None) -> None:
    """Best effort: the workflow writes the final state too, so a failure here is harmless.

    The attempt closes `cancelled` either way (its command was killed midway, so it may have
    acted); an interrupted step stays running in the mirror, since Temporal retries it.
    """
    from opsconductor.activities.attempts import record_attempt_finished

    now = _now()
    step_id = inp.step.id
    if interrupted is None:
        record = StepRecord(step_id=step_id, status=StepStatus.CANCELLED, attempts=attempt,
                            completed_at=now, error="cancelled")
        event = EventRecord(key=f"step:{step_id}:cancelled:{attempt}", type="step.status",
                            step_id=step_id, from_status="running", to_status="cancelled",
                            at=now, message="step cancelled; its processes were stopped")
    else:
        record = StepRecord(step_id=step_id, status=StepStatus.RUNNING, attempts=attempt,
                            error=f"attempt {attempt} interrupted: {interrupted}")
        event = EventRecord(key=f"step:{step_id}:interrupted:{attempt}",
                            type="step.attempt_failed", step_id=step_id, at=now,
                            message=f"attempt {attempt} interrupted ({interrupted}); its "
                                    "processes were stopped",
                            data={"attempt": attempt})
    with contextlib.suppress(Exception):
        async with pool.acquire() as conn, conn.transaction():
            await record_attempt_finished(conn, inp.execution_id, step_id, attempt,
                                          "cancelled", interrupted)
            await write_step_and_event(conn, inp.execution_id, record, event)
