"""Fair comparison helpers shared by the benches: interleaved rounds, CPU read from /proc,
PostgreSQL round trips counted per activity type, binary history size.

Why: running every bare round first and ours after, on a dev server whose history keeps
growing, made ratios drift between runs. Here each round runs bare then ours back to back and
the reported figure is the median of the per-round ratios; each side's CPU is read for the
Temporal server, the worker process and PostgreSQL, and every statement our activities send
is counted (statements sent outside an activity, by the bench's own client, are counted apart).
"""

from __future__ import annotations

import contextvars
import os
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _tree(root: int, tree: dict[int, list[int]]) -> Iterator[int]:
    yield root
    for child in tree.get(root, []):
        yield from _tree(child, tree)


def cpu_ms(root: int, *, self_only: bool = False) -> float:
    """CPU (user + system, ms) of `root` and its live descendants, including the children
    they waited for (cutime/cstime): a finished `sh` still counts."""
    pids = [root] if self_only else list(_tree(root, _children()))
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:  # utime stime cutime cstime are fields 14-17 (index 11-14)
            total += sum(int(v) for v in fields[11:15])
    return total * 1000 / TICK


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


@dataclass
class Processes:
    """The three processes whose CPU one execution costs."""

    server: int
    worker: int
    postgres: int

    def sample(self) -> dict[str, float]:
        return {"server": cpu_ms(self.server), "worker": cpu_ms(self.worker),
                "postgres": cpu_ms(self.postgres)}


# ------------------------------------------------------------ PostgreSQL round trips

_inner: contextvars.ContextVar[bool] = contextvars.ContextVar("opsc_bench_inner",
                                                              default=False)


@dataclass
class RoundTrips:
    """Counts statements sent through asyncpg in this process, keyed by the activity type
    sending them ("-" outside an activity). One `execute`/`fetch*`/`executemany` call is one
    round trip; BEGIN and COMMIT of `conn.transaction()` count as one each, as does a pool's
    reset of a released connection."""

    by_activity: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)

    def install(self) -> None:
        import asyncpg.connection as c
        from temporalio import activity

        def who() -> str:
            return activity.info().activity_type if activity.in_activity() else "-"

        def wrap(name: str) -> None:
            original = getattr(c.Connection, name)

            async def counted(conn: Any, *args: Any, **kwargs: Any) -> Any:
                if _inner.get():
                    return await original(conn, *args, **kwargs)
                self.by_activity[who()] += 1
                token = _inner.set(True)
                try:
                    return await original(conn, *args, **kwargs)
                finally:
                    _inner.reset(token)

            setattr(c.Connection, name, counted)

        for name in ("execute", "executemany", "_execute", "_executemany"):
            wrap(name)

    def snapshot(self) -> Counter[str]:
        return Counter(self.by_activity)

    def note_calls(self, activity_type: str, n: int = 1) -> None:
        self.calls[activity_type] += n


def activity_calls(history: Any) -> Counter[str]:
    """Activities scheduled in a history, by type."""
    out: Counter[str] = Counter()
    for e in history.events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            out[e.activity_task_scheduled_event_attributes.activity_type.name] += 1
    return out


def history_bytes(history: Any) -> int:
    """Binary (protobuf) size of a history: what the server stores."""
    return sum(e.ByteSize() for e in history.events)


# ------------------------------------------------------------ interleaved rounds


@dataclass
class Side:
    value: float  # the measured figure (ms, or per second)
    cpu: dict[str, float]  # ms of CPU per execution, by process


@dataclass
class Comparison:
    name: str
    unit: str
    higher_is_better: bool
    bare: list[Side] = field(default_factory=list)
    ours: list[Side] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [o.value / b.value for b, o in zip(self.bare, self.ours, strict=True)]

    def lines(self) -> list[str]:
        r = self.ratios()
        b = statistics.median(s.value for s in self.bare)
        o = statistics.median(s.value for s in self.ours)
        out = [f"{self.name}: bare {b:8.1f} {self.unit}, ours {o:8.1f} {self.unit}; "
               f"median of {len(r)} round ratios ours/bare {statistics.median(r):5.2f}x "
               f"(rounds {', '.join(f'{x:.2f}' for x in r)})"]
        for proc in ("server", "worker", "postgres"):
            bc = statistics.median(s.cpu[proc] for s in self.bare)
            oc = statistics.median(s.cpu[proc] for s in self.ours)
            out.append(f"    CPU ms per execution, {proc:<8}: bare {bc:7.1f}  ours {oc:7.1f}")
        return out


async def interleaved(comparison: Comparison, rounds: int, procs: Processes,
                      bare: Callable[[], Awaitable[tuple[float, int]]],
                      ours: Callable[[], Awaitable[tuple[float, int]]]) -> Comparison:
    """bare, ours, bare, ours ... `rounds` times; each callable returns (figure, executions)."""
    for _ in range(rounds):
        for fn, sides in ((bare, comparison.bare), (ours, comparison.ours)):
            before = procs.sample()
            value, executions = await fn()
            after = procs.sample()
            sides.append(Side(value, {k: (after[k] - before[k]) / max(1, executions)
                                      for k in after}))
    return comparison


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
