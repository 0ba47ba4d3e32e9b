"""Regexes that cannot stall a worker: `matches` runs RE2 (linear time), a pattern RE2 cannot
compile is refused at submission naming why, every check runs off the event loop bounded
in time and input size — and a plan checking `(a+)+$` over 1 MB of output leaves another
execution on the same worker free to finish within 5 s."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from opsconductor.activities import checks
from opsconductor.activities.checks import (
    MAX_CHECK_INPUT_CHARS,
    evaluate,
    evaluate_bounded,
    off_loop,
    run_check,
)
from opsconductor.starter.client import RequestValidationError
from tests.helpers import request, shell, step

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_re2_runs_catastrophic_patterns_in_linear_time() -> None:
    hostile = "a" * 1_000_000 + "!"
    started = time.monotonic()
    result = evaluate("stdout matches '(a+)+$'", {"stdout": hostile})
    elapsed = time.monotonic() - started
    print(f"RE2 (a+)+$ over {len(hostile)} chars: {elapsed * 1000:.1f} ms")
    assert not result.passed and result.detail == "stdout: no match"
    assert elapsed < 1.0
    # the check language keeps its meaning: multi-line search, escapes, named groups
    assert evaluate("stdout matches '^active \\(running\\)$'",
                    {"stdout": "x\nactive (running)\ny"}).passed
    assert evaluate("stdout matches '(?P<n>\\d+) ok'", {"stdout": "12 ok"}).passed


async def test_patterns_re2_cannot_run_are_refused_naming_why() -> None:
    for pattern, why in (("(a)\\1", "backreferences"), ("x(?=y)", "lookahead"),
                         ("(?<!a)b", "lookbehind"), ("end\\Z", "\\z"),
                         ("a" * 5000, "at most 4096")):
        result = evaluate(f"stdout matches '{pattern}'", {"stdout": "x"})
        assert not result.passed and why in result.detail, (pattern, result)


async def test_submission_refuses_an_re2_incompatible_pattern_with_its_path(engine: Any) -> None:
    with pytest.raises(RequestValidationError) as err:
        await engine.execute(request([
            {**shell("s1", "echo hi"), "success_criteria": ["stdout matches '(h)\\1'"]},
            step("v", "validate", ["s1"], checks=["s1.stdout not matches 'h(?!i)'",
                                                  {"step": "s1", "expr": "stdout matches 'hi'"}]),
            step("h", "http_request", url="https://h/", assertions=[
                {"path": "$.x", "matches": "(?<=a)b"}]),
        ]))
    found = {p.path: p.message for p in err.value.problems}
    print(f"refused patterns: {len(found)}")
    assert set(found) == {"plan.plan.steps[0].success_criteria[0]",
                          "plan.plan.steps[1].inputs.checks[0]",
                          "plan.plan.steps[2].inputs.assertions[0].matches"}, found
    assert "backreferences" in found["plan.plan.steps[0].success_criteria[0]"]
    assert all("RE2 cannot compile" in m for m in found.values())


async def test_checks_run_off_the_event_loop_and_fail_closed_when_too_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    thread = await off_loop(lambda: threading.current_thread().name)
    assert thread.startswith("opsc-check") and thread != threading.current_thread().name

    def stuck(expr: Any, context: Any) -> Any:
        time.sleep(1.5)  # a check that takes longer than its bound
        raise AssertionError("never reported")

    monkeypatch.setattr(checks, "evaluate", stuck)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    result = await evaluate_bounded("stdout == 'x'", {"stdout": "x"}, timeout=0.3)
    elapsed = time.monotonic() - started
    task.cancel()
    print(f"stuck check: failed closed after {elapsed:.2f}s, event loop ticked {ticks} times")
    assert not result.passed and "did not finish within 0.3s; failed closed" in result.detail
    assert elapsed < 1.2 and ticks >= 5


async def test_an_oversized_input_fails_closed() -> None:
    huge = "a" * (MAX_CHECK_INPUT_CHARS + 1)
    for expr in ("stdout matches 'a'", "stdout contains 'a'", "stdout == 'a'"):
        result = await run_check(expr, context={"stdout": huge})
        assert not result.passed and "over the check bound" in result.detail, result


async def test_redos_plan_does_not_stall_another_execution(engine: Any) -> None:
    one_mb = "head -c 1000000 /dev/zero | tr '\\0' a; printf '!'"
    redos = request([{**shell("big", one_mb), "success_criteria": [
        "stdout not matches '(a+)+$'", "stdout matches '^a{1000}'"]}])
    started = time.monotonic()
    slow = await engine.execute(redos, wait=False)
    quick_started = time.monotonic()
    quick = await engine.execute(request([shell("quick", "echo quick")]), wait=False)
    quick_result = await engine.result(quick.execution_id)
    quick_took = time.monotonic() - quick_started
    slow_result = await engine.result(slow.execution_id)
    slow_took = time.monotonic() - started
    print(f"ReDoS plan ((a+)+$ over 1 MB) finished in {slow_took:.2f}s; the other execution "
          f"on the same worker completed in {quick_took:.2f}s")
    assert quick_result.status.value == "completed" and quick_took < 5.0
    assert slow_result.status.value == "completed", slow_result
    records = slow_result.steps[0].output["checks"]
    assert [c["passed"] for c in records] == [True, True], records
