"""`opsconductor logs ID [STEP] [--follow]`: a step's full masked output, from the mirror.

History carries only an excerpt of each stream; the whole stream is in
`execution.step_outputs` (and, while a command still runs, in `step_output_chunks`). Output is
printed as stored, with invalid UTF-8 and control characters shown escaped, so a binary
stream can neither break the terminal nor the command. `--follow` prints what arrives until
the step (or, without STEP, the execution) has ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from opsconductor.activities.outputs import StreamRow, read_streams
from opsconductor.schema.enums import TERMINAL_STATUSES, TERMINAL_STEP_STATUSES
from opsconductor.schema.outputs import escape_bytes

POLL_SECONDS = 0.3


class StepNotFound(LookupError):
    pass


async def _ended(pool: Any, execution_id: str, step_id: str | None) -> bool:
    if step_id is None:
        status = await pool.fetchval(
            "SELECT status::text FROM execution.executions WHERE execution_id = $1",
            execution_id)
        return status in {s.value for s in TERMINAL_STATUSES}
    status = await pool.fetchval(
        "SELECT status FROM execution.step_runs WHERE execution_id = $1 AND step_id = $2",
        execution_id, step_id)
    return status in {s.value for s in TERMINAL_STEP_STATUSES}


def _render(row: StreamRow, data: bytes, header: bool, as_json: bool) -> str:
    text = escape_bytes(data)
    if as_json:
        return json.dumps({"step_id": row.step_id, "attempt": row.attempt,
                           "stream": row.stream, "text": text, "final": row.final,
                           "truncated": row.truncated})
    head = f"== {row.step_id} (attempt {row.attempt}) {row.stream} ==\n" if header else ""
    return head + text


async def print_logs(pool: Any, execution_id: str, step_id: str | None, *, follow: bool,
                     as_json: bool, timeout: float | None = None) -> int:
    """Print the streams; with `follow`, keep printing new bytes until the step or execution
    ended (and its last bytes are out). Returns how many bytes were printed."""
    if step_id is not None and await pool.fetchval(
            "SELECT 1 FROM execution.step_runs WHERE execution_id = $1 AND step_id = $2",
            execution_id, step_id) is None:
        raise StepNotFound(f"execution {execution_id} has no step {step_id!r}")
    printed: dict[tuple[str, int, str], int] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    total = 0
    last_newline = True
    while True:
        ended = follow and await _ended(pool, execution_id, step_id)
        for row in await read_streams(pool, execution_id, step_id):
            key = (row.step_id, row.attempt, row.stream)
            done = printed.get(key, 0)
            new = row.data[done:]
            if new:
                out = _render(row, new, key not in printed, as_json)
                if not as_json and key not in printed and not last_newline:
                    out = "\n" + out
                print(out, end="" if not as_json else "\n", flush=True)
                last_newline = out.endswith("\n")
                total += len(new)
            printed[key] = len(row.data)
        if not follow or ended or (deadline is not None and time.monotonic() > deadline):
            break
        await asyncio.sleep(POLL_SECONDS)
    if total and not as_json and not last_newline:
        print(flush=True)
    return total
