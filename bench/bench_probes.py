"""Benchmark: what a probe costs against the old path, spawn to exit.

Old path: the command line under `/bin/sh -c` with the worker's whole environment, the way a
read command ran before probes. New path: the probe's argv exec'd (no shell) in the reset
environment. Both go through the real local runner (the per-step supervisor, process group,
capped output). Also the decision itself: the old classifier's guess (`classify_command`)
against `probe_for` (mapping + pydantic validation). Rounds interleave old and new so load
drift hits both; prints medians and the ratio new/old per probe.

    python bench/bench_probes.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from opsconductor.activities.executors.base import StepContext
from opsconductor.activities.executors.local_command import LocalCommandRunner
from opsconductor.safety.command_env import PROBE_CWD, command_env
from opsconductor.safety.command_policy import classify_command
from opsconductor.safety.probes import probe_for
from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind
from opsconductor.schema.spec import StepSpec

CASES: list[tuple[str, dict[str, Any], str]] = [  # tool, inputs, the old command line
    ("uptime", {}, "uptime"),
    ("df", {"args": "-h"}, "df -h"),
    ("ps", {"args": "aux"}, "ps aux"),
    ("cat", {"args": ["/etc/os-release"]}, "cat /etc/os-release"),
    ("free", {"args": "-m"}, "free -m"),
]


def _ctx(command: str) -> StepContext:
    spec = StepSpec(id="b", tool="shell", kind=StepKind.COMMAND, action_class=ActionClass.READ,
                    inputs={}, command=command, order=0,
                    failure_handling=FailureHandling.ABORT)
    return StepContext(execution_id="bench", workflow_id="bench", tenant="bench",
                       environment="dev", step=spec, inputs={}, timeout=30)


async def _old(runner: LocalCommandRunner, command: str) -> float:
    t0 = time.perf_counter()
    out = await runner.run_argv(_ctx(command), ["/bin/sh", "-c", command],
                                env=dict(os.environ), cwd=None, timeout=30)
    assert out.ok, out.error
    return time.perf_counter() - t0


async def _new(runner: LocalCommandRunner, tool: str, inputs: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    probe = probe_for(tool, inputs)
    assert probe is not None
    out = await runner.run_argv(_ctx(probe.display()), probe.argv(),
                                env=command_env(probe.env, probe=True), cwd=PROBE_CWD,
                                timeout=30)
    assert out.ok, out.error
    return time.perf_counter() - t0


def _decide(n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _ in range(n):
        for _tool, _inputs, line in CASES:
            classify_command(line)
    old = (time.perf_counter() - t0) / (n * len(CASES))
    t0 = time.perf_counter()
    for _ in range(n):
        for tool, inputs, _line in CASES:
            probe_for(tool, inputs)
    new = (time.perf_counter() - t0) / (n * len(CASES))
    return old, new


async def main(rounds: int) -> None:
    runner = LocalCommandRunner()
    old: dict[str, list[float]] = {c[0]: [] for c in CASES}
    new: dict[str, list[float]] = {c[0]: [] for c in CASES}
    for r in range(rounds):
        for tool, inputs, line in CASES:
            if r % 2:  # alternate which goes first
                new[tool].append(await _new(runner, tool, inputs))
                old[tool].append(await _old(runner, line))
            else:
                old[tool].append(await _old(runner, line))
                new[tool].append(await _new(runner, tool, inputs))
    print(f"spawn to exit, median of {rounds} interleaved rounds (ms):")
    print(f"  {'probe':<8} {'old sh -c':>10} {'probe argv':>11} {'new/old':>8}")
    ratios = []
    for tool, _inputs, _line in CASES:
        o, n = statistics.median(old[tool]) * 1e3, statistics.median(new[tool]) * 1e3
        ratios.append(n / o)
        print(f"  {tool:<8} {o:>10.2f} {n:>11.2f} {n / o:>8.2f}")
    print(f"  geometric mean new/old: {statistics.geometric_mean(ratios):.2f}")
    d_old, d_new = _decide(2000)
    print(f"decision per command (us): old classifier {d_old * 1e6:.1f}, probe_for "
          f"{d_new * 1e6:.1f}, ratio {d_new / d_old:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(main(parser.parse_args().rounds))
