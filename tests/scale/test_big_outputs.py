"""40 steps x 10 MiB of output, the per-stream cap, against the real stack (marker `scale`).

Every stream is stored in full (compressed) in `execution.step_outputs`; history and the
workflow result stay bounded. One more step prints past the cap: its stored stream ends with
the truncation marker and its reference says so.
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from typing import Any

import pytest

from opsconductor.activities.executors.base import OUTPUT_CAP_BYTES
from tests.helpers import request, shell

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.scale]
LINE = b"journal: web-01 nginx[4242]: GET /healthz 200 0.003s upstream=10.0.0.7:8080\n"


def stream(size: int) -> bytes:
    return (LINE * (size // len(LINE) + 1))[:size]


def command(size: int) -> str:
    return f"yes '{LINE.decode().strip()}' | head -c {size}"


async def test_forty_steps_of_ten_mib_complete_with_history_and_result_bounded(
        engine: Any) -> None:
    steps = [shell(f"dump{i:02d}", command(OUTPUT_CAP_BYTES)) for i in range(40)]
    steps.append(shell("over", command(OUTPUT_CAP_BYTES + 5000)))
    resp = await engine.execute(request(steps, max_parallel=4), wait=True)
    result = resp.result
    assert result.status.value == "completed", result.error
    history = await engine.temporal.get_workflow_handle(resp.workflow_id).fetch_history()
    hist = len(history.to_json())
    payload = len(result.model_dump_json())
    print(f"\n41 x 10 MiB of output: result {payload:,} B, history {hist:,} B "
          f"({hist // 41:,} B per step, {len(history.events)} events)")
    assert payload < 600_000 and hist < 1_500_000
    want = hashlib.sha256(stream(OUTPUT_CAP_BYTES)).hexdigest()
    rows = await engine.pool.fetch(
        "SELECT step_id, size, sha256, truncated, length(data) AS stored FROM"
        " execution.step_outputs WHERE execution_id = $1 AND stream = 'stdout'",
        uuid.UUID(resp.execution_id))
    by_id = {r["step_id"]: r for r in rows}
    assert len(by_id) == 41
    for i in range(40):
        row = by_id[f"dump{i:02d}"]
        assert row["size"] == OUTPUT_CAP_BYTES and row["sha256"] == want
        assert not row["truncated"] and row["stored"] < OUTPUT_CAP_BYTES // 20
    over = by_id["over"]
    assert over["truncated"] and over["size"] > OUTPUT_CAP_BYTES
    tail = await engine.pool.fetchval(
        "SELECT data FROM execution.step_outputs WHERE execution_id = $1 AND step_id = 'over'"
        " AND stream = 'stdout'", uuid.UUID(resp.execution_id))
    assert zlib.decompress(tail).endswith(b"\n...[truncated 5000 bytes]")
    ref = next(s for s in result.steps if s.step_id == "over").outputs["stdout"]
    assert ref.truncated and not ref.complete
