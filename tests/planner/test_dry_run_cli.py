"""`opsconductor run --dry-run`: exit 0 with how each step would run, exit 2 with every
problem listed; nothing is started, so no server is needed at all."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.helpers import run_cli
from tests.planner.helpers import CORPUS, inventory_text

FLAGS = ("--tenant", "upstream", "--actor", "stage-d", "--environment", "dev")


def _env(tmp_path: Path) -> dict[str, str]:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(inventory_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
    # No Temporal, no database: a dry run must not need (or touch) either.
    env.update(OPSC_HOME=str(tmp_path / "home"), OPSC_INVENTORY=str(inv),
               OPSC_TEMPORAL_ADDRESS="127.0.0.1:9", OPSC_DATABASE_URL="postgresql://x@127.0.0.1:9/x")
    return env


async def test_dry_run_describes_an_upstream_plan(tmp_path: Path) -> None:
    cli = await run_cli(_env(tmp_path), "run", "--dry-run", *FLAGS,
                        str(CORPUS / "rule_check_nginx_and_processes.json"))
    assert cli.code == 0, cli
    out = cli.stdout
    assert "runs:      ps aux --sort=-pcpu" in out
    assert "(written: step_*_systemctl_*)" in out
    assert ("on failure: continue  (written: 'Log error and attempt alternative process "
            "listing method'; phrase 'alternative' -> continue)") in out
    assert "planner's execution_location: automation-service (where it runs, not a host)" in out
    assert out.rstrip().endswith("would run")
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


async def test_dry_run_json_for_stage_d(tmp_path: Path) -> None:
    cli = await run_cli(_env(tmp_path), "run", "--dry-run", "--json", *FLAGS,
                        str(CORPUS / "llm_multi_machine_template.json"))
    assert cli.code == 0, cli
    doc = cli.json
    query, fan = doc["steps"]
    assert query["executor"] == "Asset Service query" and query["run_time"]
    assert fan["target"] == "each returned asset" and fan["connector"] == "automation-service"
    assert fan["depends_on"] == [query["id"]]


async def test_dry_run_refusal_lists_every_problem(tmp_path: Path) -> None:
    cli = await run_cli(_env(tmp_path), "run", "--dry-run", *FLAGS,
                        str(CORPUS / "llm_multi_machine_wrong.json"))
    assert cli.code == 2, cli
    assert "refused: 2 problem(s)" in cli.stdout
    assert "plan.plan.steps[1].inputs.asset_ids" in cli.stdout
    assert "`target_hosts` takes one entry" in cli.stdout
    cli = await run_cli(_env(tmp_path), "run", "--dry-run", "--json", *FLAGS,
                        str(CORPUS / "dependency_cycle.json"))
    assert cli.code == 2
    assert [p["path"] for p in cli.json["problems"]] == ["plan.plan.steps"]
    assert "cycle" in cli.json["problems"][0]["message"]
