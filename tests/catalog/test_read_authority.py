"""At run time, on the session's worker: a principal granted only catalog read tools (no
`shell`) runs them in a strict environment; a change tool, or free text on a read tool, is
refused before anything starts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from opsconductor.starter.client import SubmissionRefused
from tests.catalog.helpers import stage_c_step


def plan(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"tenant": "upstream", "actor": "rita", "environment": "prod",
            "plan": {"plan": {"steps": list(steps)},
                     "execution_metadata": {"nonce": uuid.uuid4().hex}}}


async def test_read_tools_run_for_a_principal_without_shell(engine: Any) -> None:
    resp = await engine.execute(plan(stage_c_step("uname", {"host": "localhost"}),
                                     stage_c_step("df", {"host": "localhost",
                                                         "human_readable": True}, 1)),
                                wait=True)
    assert resp.result is not None and resp.result.status.value == "completed", resp.result
    assert all(s.status.value == "completed" for s in resp.result.steps)
    print(f"\nrita (catalog reads only, prod): {len(resp.result.steps)} read steps completed")


@pytest.mark.parametrize("step", [
    stage_c_step("renice", {"host": "localhost"}),
    stage_c_step("uname", {"host": "localhost", "command": "uname; touch /tmp/x"}),
])
async def test_change_tools_and_free_text_are_refused_for_it(engine: Any,
                                                            step: dict[str, Any]) -> None:
    with pytest.raises(SubmissionRefused) as err:
        await engine.execute(plan(step), wait=False)
    assert "denied: rita" in str(err.value)
