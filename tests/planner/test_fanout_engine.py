"""An asset query fanning out through the real engine: the templated step runs once per host
the Asset Service returned, each variant authorized and leased on its own asset."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.executors.servers import serve
from tests.planner.standins import ASSETS, PLAN, SEEN
from tests.planner.standins import TagAssetService as AssetService


@pytest.fixture
def asset_service(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve(AssetService) as url:
        monkeypatch.setattr(engine.settings, "asset_service_url", url)
        SEEN.clear()
        yield url


async def test_an_asset_query_fans_out_in_a_real_run(engine: Any, asset_service: str) -> None:
    tenant = f"fan-{uuid.uuid4().hex[:8]}"
    doc = json.loads(json.dumps(PLAN))
    doc.update(tenant=tenant, actor="alice")
    res = await engine.execute(doc, wait=True)
    assert res.status.value == "completed", res
    row = await engine.pool.fetchrow(
        "SELECT output FROM execution.step_runs WHERE execution_id = $1"
        " AND step_id = 'step_002'", uuid.UUID(res.execution_id))
    output = json.loads(row["output"]) if isinstance(row["output"], str) else row["output"]
    text = json.dumps(output)
    assert "host=node-a ip=127.0.0.1" in text and "host=node-b ip=127.0.0.2" in text
    # one decision per variant, on the asset it acted on; no lease left behind
    audited = {r["resource"] for r in await engine.pool.fetch(
        "SELECT resource FROM execution.rbac_audit WHERE execution_id = $1"
        " AND step_id = 'step_002'", res.execution_id)}
    assert {"a1", "a2"} <= audited
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.execution_locks WHERE asset = ANY($1::text[])",
        [a["id"] for a in ASSETS]) == 0
