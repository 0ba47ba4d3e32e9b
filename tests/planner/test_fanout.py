"""An asset query against a local stand-in of the Asset Service, then a templated step fanned
out to the hosts it returned, each variant run for real on its (local-connector) asset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from opsconductor.activities.executors.asset_query import AssetQueryExecutor
from opsconductor.activities.executors.base import StepContext
from opsconductor.activities.fanout import executor_variant_runner, run_fanout, variant_specs
from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import validate_request
from tests.executors.servers import serve
from tests.planner.helpers import allow_all
from tests.planner.standins import ASSETS, PLAN, SEEN
from tests.planner.standins import TagAssetService as AssetService


@pytest.fixture
def asset_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve(AssetService) as url:
        monkeypatch.setenv("OPSC_ASSET_SERVICE_URL", url)
        SEEN.clear()
        yield url


def _ctx(step: Any) -> StepContext:
    return StepContext(execution_id="00000000-0000-0000-0000-000000000001", workflow_id="wf",
                       tenant="t", environment="dev", step=step, inputs=step.inputs,
                       timeout=30)


async def test_asset_query_fans_out_to_returned_hosts(asset_service: str) -> None:
    spec = build_spec(validate_request(PLAN), execution_id="e", workflow_id="w",
                      idempotency_key="k")
    query, step = spec.steps
    assert step.fan_out_from == query.id and step.depends_on == [query.id]
    outcome = await AssetQueryExecutor().run(_ctx(query))
    assert outcome.ok and outcome.output["count"] == 2
    assert SEEN[0] == {"path": "/api/v1/assets", "query": {"tags": "win10", "limit": "100"}}
    results = {query.id: {"output": outcome.output, "stdout": outcome.stdout, "exit_code": 0}}
    variants = variant_specs(step, results)
    assert [(v.id, v.target) for v in variants] == [("step_002#1", "node-a"),
                                                    ("step_002#2", "node-b")]
    ran = await run_fanout(step, results, executor_variant_runner(_ctx(step),
                                                                  authorize=allow_all),
                           max_concurrency=2)
    assert ran.ok, ran.error
    assert [v["stdout"].strip() for v in ran.output["variants"]] == [
        "host=node-a ip=127.0.0.1", "host=node-b ip=127.0.0.2"]
    assert ran.output["succeeded"] == 2


async def test_values_are_shell_quoted_and_templated_step_never_runs_raw(
        asset_service: str) -> None:
    ASSETS.append({"id": "a4", "hostname": "x; touch /tmp/opsc-pwned", "connector": "local",
                   "ip_address": "127.0.0.9", "tags": ["evil"]})
    try:
        plan = json.loads(json.dumps(PLAN))
        plan["plan"]["steps"][0]["parameters"]["filters"]["tags"] = ["evil"]
        plan["plan"]["steps"][1]["parameters"]["target"] = "localhost"
        spec = build_spec(validate_request(plan), execution_id="e", workflow_id="w",
                          idempotency_key="k")
        query, step = spec.steps
        from opsconductor.activities.executors.registry import executor_for

        raw = await executor_for(step.kind).run(_ctx(step))
        assert not raw.ok and "template variables" in (raw.error or "")
        outcome = await AssetQueryExecutor().run(_ctx(query))
        results = {query.id: {"output": outcome.output}}
        (variant,) = variant_specs(step, results)
        assert variant.command == "echo host='x; touch /tmp/opsc-pwned' ip=127.0.0.9"
        assert variant.target == "localhost"
    finally:
        ASSETS.pop()


async def test_each_variant_is_authorized_on_its_own_asset(asset_service: str) -> None:
    spec = build_spec(validate_request(PLAN), execution_id="e", workflow_id="w",
                      idempotency_key="k")
    query, step = spec.steps
    outcome = await AssetQueryExecutor().run(_ctx(query))
    results = {query.id: {"output": outcome.output}}
    asked: list[tuple[str, str]] = []

    async def authorize(variant: Any, asset: Any) -> str | None:
        asked.append((variant.id, asset.id))
        return "denied: no rule for a2" if asset.id == "a2" else None

    ran = await run_fanout(step, results, executor_variant_runner(_ctx(step),
                                                                  authorize=authorize))
    assert sorted(asked) == [("step_002#1", "a1"), ("step_002#2", "a2")]  # concurrent
    assert not ran.ok and ran.error_type == "RbacDenied"
    first, second = ran.output["variants"]
    assert first["ok"] and first["stdout"].strip() == "host=node-a ip=127.0.0.1"
    assert not second["ok"] and second["stdout"] == ""


def test_many_variants_stay_small_enough_for_one_step_result() -> None:
    from opsconductor.activities.executors.base import StepOutcome
    from opsconductor.activities.fanout import VariantOutcome, aggregate

    step = build_spec(validate_request(PLAN), execution_id="e", workflow_id="w",
                      idempotency_key="k").steps[1]
    outcomes = [VariantOutcome(id=f"step_002#{n}", target=f"h{n}", ok=True, stdout="x" * 60_000)
                for n in range(1, 201)]
    folded: StepOutcome = aggregate(step, outcomes)
    size = len(json.dumps(folded.output)) + len(folded.stdout)
    assert folded.ok and folded.output["count"] == 200
    assert size < 600 * 1024
    assert folded.output["variants"][0]["stdout"].endswith("bytes]")


async def test_a_fleet_selector_asks_the_asset_service(asset_service: str) -> None:
    from opsconductor.activities.fleet import FleetTargetsError, fleet_targets
    from opsconductor.activities.service_clients import AssetServiceError
    from opsconductor.schema.config import load_settings
    from opsconductor.schema.fleet import fleet_from

    settings = load_settings()
    assert await fleet_targets(fleet_from({"tags": ["win10"]}, None, None), settings) == \
        ["a1", "a2"]
    assert SEEN[-1]["query"]["tags"] == "win10"
    with pytest.raises(FleetTargetsError, match="matches no asset in the Asset Service"):
        await fleet_targets(fleet_from({"tags": ["win10", "gpu"]}, None, None), settings)
    down = settings.model_copy(update={"asset_service_url": "http://127.0.0.1:9"})
    with pytest.raises(AssetServiceError):
        await fleet_targets(fleet_from({"tags": ["win10"]}, None, None), down)
