"""A client in another shell, with only OPSC_HOME set, decides like the stack's worker: the
running stack's stack.json names the RBAC policy and inventory the worker uses."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import request, step
from tests.integration.helpers import run_cli

POLICY = Path(__file__).resolve().parents[1] / "rbac_policy.yaml"


@pytest.fixture
def stack_home(engine: Any, temporal_server: Any, migrated_pg: str, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """An OPSC_HOME whose stack.json describes the session's stack, as `opsconductor dev`
    writes it; the worker uses the same inventory."""
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"assets": [
        {"id": "same-web-01", "hostname": "same-web-01.example.internal", "connector": "local"}]}))
    monkeypatch.setattr(engine.settings, "inventory", inventory)
    home = tmp_path / "home"
    home.mkdir()
    (home / "stack.json").write_text(json.dumps({
        "temporal_address": temporal_server.address, "namespace": "default",
        "task_queue": engine.settings.task_queue, "database_url": migrated_pg,
        "rbac_policy": str(POLICY), "inventory": str(inventory)}))
    return home


def bare_env(home: Path) -> dict[str, str]:
    """A new terminal: PATH and OPSC_HOME, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
    return {**env, "OPSC_HOME": str(home)}


def prod_plan(tenant: str) -> dict[str, Any]:
    # alice holds `sre` in the stack's policy: allowed in prod; the built-in policy denies prod
    return request([step("ping", "noop", target="same-web-01")], tenant=tenant,
                   environment="prod", actor="alice")


async def test_a_bare_shell_accepts_what_the_worker_allows(stack_home: Path,
                                                           tmp_path: Path) -> None:
    tenant = f"same-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "req.json"
    path.write_text(json.dumps(prod_plan(tenant)))
    cli = await run_cli(bare_env(stack_home), "run", str(path), "--json", "--wait")
    assert cli.code == 0, cli
    assert cli.json["status"] == "completed", cli


async def test_without_the_stack_files_the_same_shell_would_refuse(stack_home: Path,
                                                                   tmp_path: Path) -> None:
    """The control: the same request, judged without the stack's policy and inventory, is
    refused — which is what every client shell did before stack.json named them."""
    doc = json.loads((stack_home / "stack.json").read_text())
    del doc["rbac_policy"], doc["inventory"]
    (stack_home / "stack.json").write_text(json.dumps(doc))
    path = tmp_path / "req.json"
    path.write_text(json.dumps(prod_plan(f"same-{uuid.uuid4().hex[:8]}")))
    cli = await run_cli(bare_env(stack_home), "run", str(path), "--json")
    assert cli.code != 0, cli
    assert "same-web-01" in cli.stdout + cli.stderr
