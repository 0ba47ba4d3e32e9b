"""The planner's own approval points (PlanV1 `execution_metadata.approval_points`, bare step
ids) gate their steps in a real run, like the envelope's."""

from __future__ import annotations

from typing import Any

from tests.helpers import pending, request, step, until


async def test_a_metadata_approval_point_holds_its_step(engine: Any) -> None:
    doc = request([step("a"), step("b", "noop", ["a"])])
    doc["plan"]["execution_metadata"]["approval_points"] = ["b"]
    resp = await engine.execute(doc, wait=False)
    progress = await until(engine, resp.execution_id, pending)
    states = {s.id: s.status.value for s in progress.steps}
    assert states["a"] == "completed" and states["b"] in ("pending", "waiting"), states
    assert (await engine.approve(resp.execution_id, "bob")).accepted
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed"
