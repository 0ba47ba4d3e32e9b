"""Every read tool of upstream's catalog that we run ourselves, for a principal without
`shell` in prod (`rita`: granted the catalog's read tool names and `probe:*`, nothing else):
its example plan, built as Stage C builds it, is dry-run and authorized by the gate the
worker's activities use. Each is a typed probe, or needs `shell` for a reason listed in
`CATALOG_NO_PROBE` (and in docs/probes.md), or is refused for a named reason; no change tool
of the catalog runs for that principal. Counts printed."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor.activities.authorization import ActionGate, judged_command
from opsconductor.safety.masking import LiveSecrets
from opsconductor.safety.probes import CATALOG_NO_PROBE
from opsconductor.safety.rbac import audit_many
from opsconductor.schema.catalog import ROUTES, CatalogTool, catalog
from opsconductor.schema.catalog.specs import NEEDS_HOST
from opsconductor.schema.spec import build_spec
from opsconductor.schema.tools import PLAIN_SECRET_MESSAGE
from opsconductor.schema.validation import validate_request
from opsconductor.starter.dry_run import dry_run
from tests.catalog.helpers import inventory_text, stage_c_step

ROOT = Path(__file__).resolve().parents[2]
ACTOR = "rita"
# Refused before anything is judged, for a named reason (the example names no host to run on).
REFUSED = {"Test-Connection": NEEDS_HOST}


def ours(action: set[str]) -> list[CatalogTool]:
    return [r for r in catalog() if r.action in action and not ROUTES[r.location].sent]


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(inventory_text())
    monkeypatch.setenv("OPSC_INVENTORY", str(inv))


def request_for(row: CatalogTool, tenant: str) -> dict[str, Any]:
    return {"tenant": tenant, "actor": ACTOR, "environment": "prod",
            "plan": {"plan": {"steps": [stage_c_step(row.name, row.example)]},
                     "execution_metadata": {"nonce": uuid.uuid4().hex}}}


async def judge(engine: Any, gate_engine: Any, row: CatalogTool) -> tuple[str, str, Any]:
    """(verdict, detail, the dry run's step): probe / shell / refused, each cross-checked
    between the dry run and the worker's gate."""
    tenant = f"rp-{uuid.uuid4().hex[:8]}"
    req = request_for(row, tenant)
    report = await dry_run(req)
    messages = [p.message for p in report.problems]
    if not report.steps or any(m in (NEEDS_HOST, PLAIN_SECRET_MESSAGE) for m in messages):
        assert not report.would_run
        return "refused", "; ".join(messages), None
    spec = build_spec(validate_request(req), execution_id=str(uuid.uuid4()), workflow_id="w",
                      idempotency_key=uuid.uuid4().hex)
    s = spec.steps[0]
    gate = ActionGate(engine=gate_engine, pool=engine.pool, tenant=tenant, actor=ACTOR,
                      environment="prod", execution_id=spec.execution_id, step_id=s.id)
    verdict = await gate.decide(tool=s.tool, resource=s.target, command=judged_command(s),
                                inputs=s.inputs)
    await audit_many(engine.pool, verdict.entries)
    step = report.steps[0]
    # the dry run and the worker's gate decide alike, on the same probe
    assert step.allowed == verdict.allowed == report.would_run, (row.name, step, verdict)
    assert step.probe == (verdict.probe.name if verdict.probe else None), row.name
    if verdict.allowed:
        assert verdict.probe is not None, (row.name, "allowed without being a probe")
        assert all(e.tool != "shell" for e in verdict.entries)
        return "probe", verdict.probe.display(), step
    return ("shell" if "as shell" in verdict.reason else "denied"), verdict.reason, step


async def test_every_catalog_read_tool_is_a_probe_or_listed(engine: Any,
                                                            inventory: None) -> None:
    from opsconductor.starter.worker import build_activities

    activities = {fn.__name__: fn for fn in build_activities(engine.settings, engine.pool,
                                                             live=LiveSecrets())}
    gate_engine = activities["run_step"].__self__.rbac
    rows = ours({"read"})
    results: dict[str, list[tuple[CatalogTool, str]]] = {"probe": [], "shell": [],
                                                         "refused": [], "denied": []}
    for row in rows:
        verdict, detail, _ = await judge(engine, gate_engine, row)
        results[verdict].append((row, detail))
    by = {k: Counter(r.platform for r, _ in v) for k, v in results.items()}
    print(f"\n[catalog read tools we run ourselves, {ACTOR} in prod without shell] "
          f"{len(rows)} rows: as probe {len(results['probe'])} "
          f"({dict(by['probe'])}), needs shell with a listed reason "
          f"{len(results['shell'])} ({dict(by['shell'])}), refused "
          f"{len(results['refused'])}, denied otherwise {len(results['denied'])}")
    for row, detail in results["shell"]:
        print(f"  needs shell: {row.name} ({row.platform}): {detail.split(': ', 3)[-1]}")
    for row, detail in results["refused"]:
        print(f"  refused: {row.name}: {detail}")
    assert not results["denied"], [(r.name, d) for r, d in results["denied"]]
    for row, detail in results["shell"]:
        assert row.name in CATALOG_NO_PROBE, (row.name, detail)
        assert CATALOG_NO_PROBE[row.name] in detail, (row.name, detail)
    assert {r.name: d for r, d in results["refused"]} == REFUSED
    # the data file's `probe` column says the same as the mapping
    probes = {r.file: d.split()[0] for r, d in results["probe"]}
    for row, _ in results["probe"]:
        assert row.probe is not None, row.name
    for row, _ in results["shell"]:
        assert row.probe is None, row.name
    assert len(probes) == len(results["probe"])
    # the listed reasons name only tools that are listed in the docs, and each is needed
    needed = {r.name for r, _ in results["shell"]}
    assert set(CATALOG_NO_PROBE) == needed, set(CATALOG_NO_PROBE) ^ needed
    for doc in ("docs/probes.md", "docs/catalog.md"):
        text = (ROOT / doc).read_text()
        missing = [n for n in CATALOG_NO_PROBE if f"`{n}`" not in text]
        assert not missing, (doc, missing)
    assert len(results["probe"]) >= 54


async def test_no_catalog_change_tool_runs_for_that_principal(engine: Any,
                                                              inventory: None) -> None:
    from opsconductor.starter.worker import build_activities

    activities = {fn.__name__: fn for fn in build_activities(engine.settings, engine.pool,
                                                             live=LiveSecrets())}
    gate_engine = activities["run_step"].__self__.rbac
    rows = ours({"modify", "deploy"})
    counts: Counter[str] = Counter()
    for row in rows:
        verdict, detail, _ = await judge(engine, gate_engine, row)
        counts[verdict] += 1
        assert verdict != "probe", (row.name, detail)
    print(f"\n[catalog change tools we run ourselves, {ACTOR} in prod] {len(rows)} rows: "
          f"run 0, denied {counts['denied'] + counts['shell']}, refused before judging "
          f"{counts['refused']}")
    assert counts["denied"] + counts["shell"] + counts["refused"] == len(rows) > 0


def test_the_readers_grant_is_the_catalogs_read_tools() -> None:
    """`rita`'s rule lists exactly the catalog's read tools we run ourselves, plus probes."""
    policy = yaml.safe_load((ROOT / "tests" / "rbac_policy.yaml").read_text())
    rule = next(r for r in policy["rules"] if r["id"] == "catalog-readers-prod")
    assert set(rule["tools"]) == {"probe:*"} | {r.name for r in ours({"read"})}
    assert "shell" not in rule["tools"]
