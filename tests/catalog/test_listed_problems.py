"""Problems of the world a plan runs in are listed problems, at the dry run and at
submission, never internal errors: two inventory hosts whose names differ only in case, a
catalog tool whose service is not configured."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from opsconductor.schema.config import Settings
from opsconductor.schema.validation import RequestValidationError
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.dry_run import dry_run
from tests.catalog.helpers import plan_for
from tests.integration.helpers import run_cli

PLAN = {"tenant": "t", "actor": "a", "environment": "dev",
        "plan": {"steps": [{"id": "s", "tool": "uptime", "inputs": {"target": "web-1"}}]}}
CASE_TWINS = ("assets:\n  - {id: a1, hostname: Web-1, connector: local}\n"
              "  - {id: a2, hostname: web-1, connector: local}\n")

def _client(tmp_path: Path, **settings: Any) -> ExecutionClient:
    """A client that only prepares (no Temporal, no database is reached by `prepare`)."""
    return ExecutionClient(temporal=None, pool=None,  # type: ignore[arg-type]
                           settings=Settings(home=tmp_path / "home", **settings))

@pytest.fixture
def twins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(CASE_TWINS)
    monkeypatch.setenv("OPSC_INVENTORY", str(inv))
    monkeypatch.delenv("OPSC_ASSET_SERVICE_URL", raising=False)
    return inv

async def test_case_twins_in_the_inventory_are_a_listed_problem(twins: Path,
                                                                tmp_path: Path) -> None:
    report = await dry_run(PLAN)
    assert not report.would_run
    assert [p.path for p in report.problems] == ["inventory"]
    message = report.problems[0].message
    assert "'a1' and 'a2' share the name 'web-1'" in message and str(twins) in message
    assert "validation error" not in message  # said plainly, not as pydantic's dump

    with pytest.raises(RequestValidationError) as err:
        await _client(tmp_path, inventory=twins).prepare(PLAN)
    assert [p.path for p in err.value.problems] == ["inventory"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
    env.update(OPSC_HOME=str(tmp_path / "cli-home"), OPSC_INVENTORY=str(twins))
    plan = tmp_path / "plan.json"

    plan.write_text(json.dumps(PLAN))
    cli = await run_cli(env, "run", "--dry-run", "--json", str(plan))
    assert cli.code == 2, cli  # a refusal, not an internal error (exit 1)
    assert cli.json["problems"][0]["path"] == "inventory"
    assert "internal error" not in cli.stdout + cli.stderr

async def test_unconfigured_service_is_refused_at_submission(tmp_path: Path) -> None:
    client = _client(tmp_path)
    for tool, setting in (("tcpdump", "OPSC_NETWORK_SERVICE_URL"),
                          ("webhook-sender", "OPSC_COMMUNICATION_SERVICE_URL"),
                          ("asset-delete", "OPSC_ASSET_SERVICE_URL")):
        plan = plan_for({"tool": tool, "inputs": {}})
        with pytest.raises(RequestValidationError) as err:
            await client.prepare(plan)
        assert [p.path for p in err.value.problems] == ["plan.plan.steps[0].tool"]
        assert setting in err.value.problems[0].message
    configured = _client(tmp_path, communication_service_url="http://127.0.0.1:9")
    prepared = await configured.prepare(plan_for({"tool": "slack-cli", "inputs": {}}))
    assert prepared.draft.steps[0].connector == "communication-service"
