"""Upstream's Linux plans executed for real through the engine (Temporal workflow, worker,
Postgres mirror): on this machine and on a loopback SSH asset. Failure handling follows the
documented reading of the planner's prose, and execution_location never picks a host."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import SshServer
from tests.planner.conftest import SSH_KEY_SECRET
from tests.planner.helpers import load


def submitted(name: str) -> dict[str, Any]:
    """The corpus plan with a fresh actor, so each run is a new execution."""
    return {**load(name), "actor": f"stage-d-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def linux_inventory(planner_sshd: SshServer, tmp_path: Path, engine: Any,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "inventory.json"
    asset = planner_sshd.asset(id="upstream-linux", hostname="upstream-linux",
                               credentials={"private_key": {"type": "secret",
                                                            "path": SSH_KEY_SECRET}})
    path.write_text(json.dumps({"assets": [asset]}))
    monkeypatch.setenv("OPSC_INVENTORY", str(path))
    monkeypatch.setattr(engine.settings, "inventory", path)
    yield path


def by_id(result: Any) -> dict[str, Any]:
    return {s.step_id: s for s in result.steps}


async def test_schema_example_runs_ps_on_this_machine(engine: Any) -> None:
    resp = await engine.execute(submitted("plan_v1_schema_example.json"), wait=True)
    assert resp.result.status.value == "completed", resp.result
    (step,) = resp.result.steps
    assert step.stdout.splitlines()[0].split()[:3] == ["USER", "PID", "%CPU"]


async def test_troubleshooting_plan_runs_and_reads_prose_failure_handling(
        engine: Any) -> None:
    resp = await engine.execute(submitted("rule_troubleshoot_ssh.json"), wait=True)
    steps = by_id(resp.result)
    status = {sid.split("_", 2)[2]: s.status.value for sid, s in steps.items()}
    assert status == {"journalctl_logs": "completed", "network_tools_netstat": "completed",
                      "info_display_diagnostic_info": "completed",
                      "config_manager_read": "failed"}
    netstat = next(s for sid, s in steps.items() if "netstat" in sid)
    assert "Netid" in netstat.stdout or "State" in netstat.stdout
    info = next(s for sid, s in steps.items() if "info_display" in sid)
    # a summary of probes: each part under its own argv
    assert "== /usr/bin/uname --all" in info.stdout
    assert "== /usr/bin/cat -- /proc/loadavg" in info.stdout
    # "Check configuration file syntax and permissions ..." matches no phrase: abort
    assert resp.result.status.value == "failed"
    assert "nginx.conf" in (resp.result.error or "")


async def test_wildcard_dependency_holds_back_its_dependent(engine: Any) -> None:
    resp = await engine.execute(submitted("rule_check_nginx_and_processes.json"), wait=True)
    steps = by_id(resp.result)
    systemctl = next(s for sid, s in steps.items() if "systemctl" in sid)
    ps = next(s for sid, s in steps.items() if "_ps_" in sid)
    assert systemctl.status.value == "failed"
    assert ps.status.value == "skipped" and ps.started_at is None
    assert resp.result.status.value == "failed"


@pytest.mark.parametrize("name", ["stage_e_test_plan.json", "llm_linux_ssh_ls.json"])
async def test_upstream_ssh_plans_run_on_the_ssh_asset(
        name: str, engine: Any, linux_inventory: Path, planner_sshd: SshServer) -> None:
    resp = await engine.execute(submitted(name), wait=True)
    assert resp.result.status.value == "completed", resp.result
    for step in resp.result.steps:
        out = step.output.get("result", step.output)  # wrapped when success criteria ran
        assert out["asset"] == "upstream-linux"
        assert out["host"] == "127.0.0.1"
    first = resp.result.steps[0].stdout
    assert "total" in first.splitlines()[0]  # ls -la over SSH
    rows = await engine.pool.fetch(
        "SELECT step_id, target FROM execution.step_runs WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    assert {r["target"] for r in rows} == {"upstream-linux"}


async def test_execution_location_is_not_a_host(engine: Any, linux_inventory: Path) -> None:
    """Every captured upstream step says execution_location automation-service (which is no
    asset anywhere): the steps run on this worker, and the mirror names no such target."""
    doc = submitted("rule_troubleshoot_ssh.json")
    assert {s["execution_location"] for s in doc["plan"]["plan"]["steps"]} == {
        "automation-service"}
    resp = await engine.execute(doc, wait=True)
    rows = await engine.pool.fetch(
        "SELECT target FROM execution.step_runs WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    assert len(rows) == 4
    assert {r["target"] for r in rows} <= {None, "localhost"}
