"""At run time, on the session's worker: a principal granted only catalog read tools (no
`shell`) runs them in a strict environment; a change tool, or free text on a read tool, is
refused before anything starts."""

from __future__ import annotations

import getpass
import os
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
    here = {"host": "localhost"}
    resp = await engine.execute(plan(
        stage_c_step("uname", here), stage_c_step("df", {**here, "human_readable": True}, 1),
        stage_c_step("whoami", here, 2), stage_c_step("free", here, 3),
        stage_c_step("ps", {**here, "format": "aux", "sort_by": "cpu"}, 4),
        stage_c_step("ls", {**here, "path": "/tmp", "long_format": True, "sort_by": "time"}, 5),
        stage_c_step("find", {**here, "path": "/var/log", "max_depth": 1,
                              "file_type": "d"}, 6)), wait=True)
    assert resp.result is not None and resp.result.status.value == "completed", resp.result
    assert all(s.status.value == "completed" for s in resp.result.steps)
    by_id = {s.step_id: s for s in resp.result.steps}
    assert by_id["step_00000000"].stdout.strip() == os.uname().sysname  # as a bare `uname`
    assert by_id["step_00000002"].stdout.strip() == getpass.getuser()
    assert "/var/log" in by_id["step_00000006"].stdout.split()
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
