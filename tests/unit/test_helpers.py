"""The shared waits: they return the awaited value, give up on time, and say what they awaited."""

from __future__ import annotations

import itertools

import pytest

from tests.helpers import assert_eventually, wait_for, wait_for_sync


async def test_wait_for_returns_the_first_truthy_value_of_sync_or_async_conditions() -> None:
    counter = itertools.count()
    assert await wait_for(lambda: next(counter) >= 3 and "ready", what="x", interval=0) == "ready"

    async def later() -> list[int] | None:
        n = next(counter)
        return [n] if n >= 6 else None

    assert await wait_for(later, what="x", interval=0) == [6]


async def test_wait_for_gives_up_naming_what_it_awaited_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"0.05s waiting for the door to open; last: \[\]"):
        await wait_for(lambda: [], what="the door to open", timeout=0.05, interval=0.01)


async def test_assert_eventually_retries_until_the_assertion_holds() -> None:
    counter = itertools.count()

    def check() -> int:
        n = next(counter)
        assert n >= 2, f"only {n}"
        return n

    assert await assert_eventually(check, interval=0) == 2
    with pytest.raises(AssertionError, match="waiting for the count: never"):
        await assert_eventually(_never, what="the count", timeout=0.05, interval=0.01)


def _never() -> None:
    raise AssertionError("never")


def test_wait_for_sync_is_bounded_too() -> None:
    assert wait_for_sync(lambda: 5, what="x") == 5
    with pytest.raises(AssertionError, match="waiting for nothing"):
        wait_for_sync(lambda: 0, what="nothing", timeout=0.05, interval=0.01)
