"""Step outputs by reference: the full masked streams in Postgres, a summary for Temporal.

The step activity calls `by_reference` on its masked result: every non-empty stream (stdout,
stderr, and the structured output when it is larger than `INLINE_OUTPUT_BYTES`) becomes a
`StoredStream` (written with the step's end record, in its transaction) and an `OutputRef`
(size, sha256, truncation) in the result, whose text fields keep only an escaped head/tail
excerpt. `opsconductor logs` reads the stored bytes back with `read_streams`, and while a
command still runs, the chunks `OutputTap` wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from opsconductor.schema.messages import OutputRef, StepResult
from opsconductor.schema.outputs import (
    EXCERPT_CHARS,
    INLINE_OUTPUT_BYTES,
    escape_json,
    escape_text,
    excerpt,
    truncated_bytes,
)

log = logging.getLogger("opsconductor.outputs")
COMPRESS_FROM = 512  # smaller streams are stored as they are
# Live output shown while a command runs, per attempt: beyond it `logs --follow` waits for
# the stored stream (masking every chunk twice would double a big step's cost).
LIVE_CAP_BYTES = 1024 * 1024
COMPRESS_LEVEL = 1  # fast: 10 MB in well under a second, and logs compress 5-20x anyway


@dataclass(frozen=True)
class StoredStream:
    ref: OutputRef
    data: bytes


def pack(data: bytes) -> tuple[str, bytes]:
    """(encoding, payload): zlib where it saves at least a tenth, else the bytes as they are."""
    if len(data) >= COMPRESS_FROM:
        packed = zlib.compress(data, COMPRESS_LEVEL)
        if len(packed) < len(data) * 0.9:
            return "zlib", packed
    return "identity", data


def unpack(encoding: str, payload: bytes) -> bytes:
    return zlib.decompress(payload) if encoding == "zlib" else bytes(payload)


def _stream(stream: str, execution_id: str, result: StepResult, data: bytes,
            dropped: int, complete: bool) -> StoredStream:
    ref = OutputRef.model_validate({
        "stream": stream, "execution_id": execution_id, "step_id": result.step_id,
        "attempt": result.attempts, "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "truncated": dropped > 0,
        "complete": complete})
    return StoredStream(ref, data)


def by_reference(result: StepResult, execution_id: str, *, excerpt_chars: int = EXCERPT_CHARS,
                 inline_output_bytes: int = INLINE_OUTPUT_BYTES,
                 ) -> tuple[StepResult, list[StoredStream]]:
    """The result as history may carry it, and the streams to store in full.

    Text is escaped on the way (NUL, other control characters, lone surrogates), so neither
    Temporal's JSON nor PostgreSQL's text and jsonb ever see a byte they refuse.
    """
    stored: list[StoredStream] = []
    update: dict[str, Any] = {}
    for name in ("stdout", "stderr"):
        text: str = getattr(result, name)
        if not text:
            continue
        data = text.encode("utf-8", "surrogatepass")
        shown, complete = excerpt(text, excerpt_chars)
        stored.append(_stream(name, execution_id, result, data, truncated_bytes(text),
                              complete))
        update[name] = shown
    if result.output is not None:
        dumped = json.dumps(result.output, default=str)
        if len(dumped) > inline_output_bytes or "\\u0000" in dumped or "\\ud" in dumped:
            data = dumped.encode("utf-8", "surrogatepass")
            big = len(dumped) > inline_output_bytes
            stored.append(_stream("output", execution_id, result, data, 0, not big))
            update["output"] = (escape_json(result.output) if not big else
                                {"stored": True, "size": len(data),
                                 "excerpt": excerpt(dumped, excerpt_chars)[0]})
    if result.error:
        update["error"] = escape_text(result.error)
    update["outputs"] = {s.ref.stream: s.ref for s in stored}
    return result.model_copy(update=update), stored


async def store_streams(conn: asyncpg.Connection, streams: list[StoredStream]) -> None:
    """Write the streams (a retried attempt overwrites its own rows) and drop the live chunks
    they supersede."""
    if not streams:
        return
    rows = []
    for s in streams:
        encoding, payload = pack(s.data)
        r = s.ref
        rows.append((r.execution_id, r.step_id, r.attempt, r.stream, r.size, r.truncated,
                     r.sha256, encoding, payload))
    await conn.executemany(
        """
        INSERT INTO execution.step_outputs
          (execution_id, step_id, attempt, stream, size, truncated, sha256, encoding, data)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (execution_id, step_id, attempt, stream) DO UPDATE SET
          size = excluded.size, truncated = excluded.truncated, sha256 = excluded.sha256,
          encoding = excluded.encoding, data = excluded.data, created_at = now()
        """, rows)
    first = streams[0].ref
    await conn.execute(
        "DELETE FROM execution.step_output_chunks WHERE execution_id = $1 AND step_id = $2"
        " AND attempt = $3", first.execution_id, first.step_id, first.attempt)


@dataclass(frozen=True)
class StreamRow:
    step_id: str
    attempt: int
    stream: str
    data: bytes
    truncated: bool
    final: bool  # the stored stream (False: chunks of a command still running)


async def read_streams(conn: asyncpg.Connection | asyncpg.Pool, execution_id: str,
                       step_id: str | None = None) -> list[StreamRow]:
    """Each step's latest attempt's streams, in plan order: stored ones, or the live chunks
    of an attempt that has not finished yet."""
    stored = await conn.fetch(
        """
        SELECT DISTINCT ON (o.step_id, o.stream) o.step_id, o.attempt, o.stream, o.encoding,
               o.data, o.truncated, s.position
        FROM execution.step_outputs o
        LEFT JOIN execution.step_runs s USING (execution_id, step_id)
        WHERE o.execution_id = $1 AND ($2::text IS NULL OR o.step_id = $2)
        ORDER BY o.step_id, o.stream, o.attempt DESC
        """, execution_id, step_id)
    live = await conn.fetch(
        """
        SELECT c.step_id, c.attempt, c.stream, string_agg(c.data, ''::bytea ORDER BY c.seq)
               AS data, s.position
        FROM execution.step_output_chunks c
        LEFT JOIN execution.step_runs s USING (execution_id, step_id)
        WHERE c.execution_id = $1 AND ($2::text IS NULL OR c.step_id = $2)
        GROUP BY c.step_id, c.attempt, c.stream, s.position
        """, execution_id, step_id)
    rows: dict[tuple[str, str], tuple[int, StreamRow]] = {}
    for r in live:
        rows[(r["step_id"], r["stream"])] = (r["position"] or 0, StreamRow(
            r["step_id"], r["attempt"], r["stream"], bytes(r["data"]), False, False))
    for r in stored:
        key = (r["step_id"], r["stream"])
        if key in rows and rows[key][1].attempt > r["attempt"]:
            continue  # a newer attempt is running
        rows[key] = (r["position"] or 0, StreamRow(
            r["step_id"], r["attempt"], r["stream"], unpack(r["encoding"], r["data"]),
            r["truncated"], True))
    order = {"stdout": 0, "stderr": 1, "output": 2}
    return [row for _, row in sorted(rows.values(),
                                     key=lambda pr: (pr[0], pr[1].step_id,
                                                     order.get(pr[1].stream, 3)))]


class OutputTap:
    """Live chunks of a running command, for `logs --follow`: masked, batched, bounded
    (`LIVE_CAP_BYTES`).

    `feed` is called by a runner with each chunk it reads; a background task writes what has
    gathered at most every `interval` seconds. A failed write is logged and dropped: live
    output is a convenience, the stored stream at the end is the record.
    """

    def __init__(self, pool: Any, execution_id: str, step_id: str, attempt: int,
                 mask: Any, *, interval: float = 0.5, cap: int = LIVE_CAP_BYTES) -> None:
        self.pool = pool
        self.key = (execution_id, step_id, attempt)
        self.mask = mask
        self.interval = interval
        self.cap = cap
        self.sent = 0
        self.pending: dict[str, list[bytes]] = {}
        self.task: asyncio.Task[None] | None = None

    def feed(self, stream: str, chunk: bytes) -> None:
        if self.sent >= self.cap:
            return
        self.pending.setdefault(stream, []).append(chunk)
        if self.task is None:
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + self.interval
            await self.flush()

    async def flush(self, final: bool = False) -> None:
        """Write what gathered, up to each stream's last newline (a secret split between two
        chunks would escape the masker); the rest waits for more, or for `final`."""
        batch, self.pending = self.pending, {}
        rows = []
        for stream, chunks in batch.items():
            raw = b"".join(chunks)
            cut = len(raw) if final or len(raw) > 65536 else raw.rfind(b"\n") + 1
            if cut < len(raw):
                self.pending[stream] = [raw[cut:]]
            text = raw[:cut].decode("utf-8", "replace")
            data = self.mask(text).encode("utf-8", "surrogatepass")[:self.cap - self.sent]
            self.sent += len(data)
            if data:
                rows.append((*self.key, stream, data))
        if not rows:
            return
        try:
            await self.pool.executemany(
                "INSERT INTO execution.step_output_chunks (execution_id, step_id, attempt,"
                " stream, data) VALUES ($1, $2, $3, $4, $5)", rows)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("live output of step %s not written: %s", self.key[1], err)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        self.pending = {}
