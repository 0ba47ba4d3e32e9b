"""Running an upstream plan step by step at executor level, as the step activity would:
resolve the target, resolve secrets, run the step's executor; a templated step goes through
`activities.fanout` with the earlier results. Used where the workflow is not needed to prove
the point (Windows, asset-query and HTTP steps against local stand-ins)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from opsconductor.activities.assets import resolve_asset
from opsconductor.activities.executors.base import StepContext, StepOutcome
from opsconductor.activities.executors.registry import executor_for
from opsconductor.activities.fanout import executor_variant_runner, run_fanout
from opsconductor.safety.secrets import resolver_from_env
from opsconductor.schema.spec import ExecutionSpec, build_spec
from opsconductor.schema.validation import validate_request


async def allow_all(variant: Any, asset: Any) -> str | None:
    """Executor-level runs judge no policy: every variant is allowed."""
    return None


def spec_of(doc: dict[str, Any]) -> ExecutionSpec:
    return build_spec(validate_request(doc), execution_id="00000000-0000-0000-0000-0000000000aa",
                      workflow_id="wf-planner", idempotency_key="k")


async def run_plan(doc: dict[str, Any]) -> dict[str, StepOutcome]:
    """Every step in plan order (the corpus plans are in dependency order already)."""
    spec = spec_of(doc)
    results: dict[str, Any] = {}
    outcomes: dict[str, StepOutcome] = {}
    for step in sorted(spec.steps, key=lambda s: s.order):
        assert all(d in results for d in step.depends_on), f"{step.id} before its dependencies"
        base = StepContext(execution_id=spec.execution_id, workflow_id=spec.workflow_id,
                           tenant=spec.tenant, environment=spec.environment.value, step=step,
                           inputs=step.inputs, timeout=30, prior_outputs=dict(results))
        if step.templated:
            outcome = await run_fanout(step, results,
                                       executor_variant_runner(base, authorize=allow_all))
        else:
            asset = await resolve_asset(step.target)
            inputs, _ = await resolver_from_env().resolve(step.inputs)
            outcome = await executor_for(step.kind).run(
                dataclasses.replace(base, inputs=inputs, asset=asset))
        outcomes[step.id] = outcome
        results[step.id] = {"status": "completed" if outcome.ok else "failed",
                            "exit_code": outcome.exit_code, "stdout": outcome.stdout,
                            "stderr": outcome.stderr, "output": outcome.output}
    return outcomes


# ------------------------------------------------------------------ the corpus

CORPUS = Path(__file__).parent / "corpus"
INDEX = json.loads((CORPUS / "index.json").read_text())
ENVELOPE = {"tenant": "upstream", "actor": "stage-d", "environment": "dev"}
WINDOWS = [("21", "192.168.50.211"), ("22", "192.168.50.212"), ("23", "192.168.50.213")]


def load(name: str) -> dict[str, Any]:
    """A corpus plan as Stage D submits it: bare PlanV1 documents get the envelope."""
    doc: dict[str, Any] = json.loads((CORPUS / name).read_text())
    return doc if "tenant" in doc else {**ENVELOPE, "plan": doc}


def inventory_text(linux_address: str = "127.0.0.1", linux_port: int = 22,
                   extra: str = "") -> str:
    lines = ["assets:",
             f"  - {{id: upstream-linux, hostname: upstream-linux, connector: ssh, address: "
             f"{linux_address}, port: {linux_port}, user: tester}}",
             "  - {id: win-1, hostname: win-1, connector: automation-service, os: windows,"
             " address: 10.0.0.5}"]
    lines += [f"  - {{id: '{i}', hostname: '{ip}', connector: automation-service, os: windows}}"
              for i, ip in WINDOWS]
    return "\n".join(lines) + "\n" + extra
