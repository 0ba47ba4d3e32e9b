"""Change windows and blackouts: the pure evaluation, across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from opsconductor.schema.windows import (
    RunScope,
    WindowPolicyError,
    evaluate,
    is_window_check,
    local_instant,
    parse_policies,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
PROD = RunScope(environment="prod", tenant="acme", asset_tags=["db"])


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def policies(*items: dict) -> object:
    return parse_policies({"version": 1, "policies": list(items)})


def nightly(zone: str = "Europe/Berlin", start: str = "01:00", end: str = "05:00",
            **extra: object) -> dict:
    return {"name": "nightly", "zone": zone, "scope": {"environments": ["prod"]},
            "windows": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                         "start": start, "end": end}], **extra}


def test_local_instant_gap_and_fold() -> None:
    # Europe/Berlin 2026: clocks jump 02:00 -> 03:00 on 29 March, fall 03:00 -> 02:00 on 25 Oct.
    assert local_instant(date(2026, 3, 29), time(2, 30), BERLIN) == utc(2026, 3, 29, 1)
    assert local_instant(date(2026, 3, 29), time(3, 0), BERLIN) == utc(2026, 3, 29, 1)
    assert local_instant(date(2026, 10, 25), time(2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)
    assert local_instant(date(2026, 7, 1), time(2, 30), BERLIN) == utc(2026, 7, 1, 0, 30)
    # America/New_York: 8 March 2026 02:00 -> 03:00 (07:00 UTC)
    assert local_instant(date(2026, 3, 8), time(2, 15), NEW_YORK) == utc(2026, 3, 8, 7)


def test_open_inside_and_wait_outside_with_the_next_opening() -> None:
    pol = policies(nightly())
    inside = evaluate(pol, PROD, utc(2026, 7, 1, 0, 30))  # 02:30 CEST
    assert inside.open and inside.action == "run"
    assert inside.closes_at == utc(2026, 7, 1, 3)  # 05:00 CEST
    outside = evaluate(pol, PROD, utc(2026, 7, 1, 12))
    assert not outside.open and outside.action == "wait"
    assert outside.opens_at == utc(2026, 7, 1, 23)  # 01:00 CEST on 2 July
    assert outside.blocking == ["nightly"] and "Europe/Berlin" in outside.reason


def test_window_lengths_across_dst_changes() -> None:
    """01:00-05:00 Berlin is 3 real hours on the spring day, 5 on the autumn day."""
    pol = policies(nightly())
    spring = evaluate(pol, PROD, utc(2026, 3, 28, 12))
    assert spring.opens_at == utc(2026, 3, 29, 0)  # 01:00 CET
    opened = evaluate(pol, PROD, spring.opens_at)
    assert opened.closes_at == utc(2026, 3, 29, 3)  # 05:00 CEST
    autumn = evaluate(pol, PROD, utc(2026, 10, 24, 12))
    assert autumn.opens_at == utc(2026, 10, 24, 23)  # 01:00 CEST
    assert evaluate(pol, PROD, autumn.opens_at).closes_at == utc(2026, 10, 25, 4)  # 05:00 CET
    lengths = {d: (evaluate(pol, PROD, o).closes_at - o) / timedelta(hours=1)
               for d, o in (("spring", spring.opens_at), ("autumn", autumn.opens_at))}
    print("window hours across DST:", lengths)
    assert lengths == {"spring": 3.0, "autumn": 5.0}


def test_a_window_inside_the_gap_has_no_length_that_day() -> None:
    pol = policies(nightly(start="02:00", end="02:45"))
    verdict = evaluate(pol, PROD, utc(2026, 3, 28, 12))
    # 29 March has no 02:00-02:45: the next opening is 30 March 02:00 CEST
    assert verdict.opens_at == utc(2026, 3, 30, 0)


def test_crossing_midnight_and_weekdays() -> None:
    pol = policies({"name": "weekend", "zone": "America/New_York",
                    "windows": [{"days": ["fri", "sat"], "start": "22:00", "end": "02:00"}]})
    scope = RunScope(environment="dev", tenant="t")
    # Saturday 2026-07-04 01:00 EDT: inside Friday's window crossing midnight
    assert evaluate(pol, scope, utc(2026, 7, 4, 5)).open
    # Sunday 01:00 EDT: inside Saturday's window; Monday 01:00 not (no Sunday window)
    assert evaluate(pol, scope, utc(2026, 7, 5, 5)).open
    monday = evaluate(pol, scope, utc(2026, 7, 6, 5))
    assert not monday.open
    assert monday.opens_at == utc(2026, 7, 11, 2)  # Friday 22:00 EDT


def test_blackout_dates_block_even_inside_the_window() -> None:
    pol = policies(nightly(blackouts=[{"start": "2026-12-24", "end": "2026-12-26",
                                       "reason": "holiday freeze"}]))
    verdict = evaluate(pol, PROD, utc(2026, 12, 25, 1))  # 02:00 CET on the 25th
    assert not verdict.open and "holiday freeze" in verdict.reason
    assert "blackout 2026-12-24..2026-12-26" in verdict.reason
    assert verdict.opens_at == utc(2026, 12, 27, 0)  # 01:00 CET on the 27th
    blocked = [d for d in range(20, 31)
               if not evaluate(pol, PROD, utc(2026, 12, d, 1)).open]
    print("blackout: blocked December nights", blocked)
    assert blocked == [24, 25, 26]


def test_blackout_only_policy_is_open_outside_the_blackout() -> None:
    pol = policies({"name": "freeze", "zone": "UTC", "blackouts": [
        {"start": "2026-12-31", "reason": "year end"}]})
    assert evaluate(pol, PROD, utc(2026, 12, 30, 23)).open
    closed = evaluate(pol, PROD, utc(2026, 12, 31, 12))
    assert not closed.open and closed.opens_at == utc(2027, 1, 1)


def test_refuse_policy_and_scope_matching() -> None:
    pol = policies(nightly(outside="refuse"),
                   {"name": "db-weekend", "zone": "UTC", "scope": {"asset_tags": ["db"]},
                    "windows": [{"days": ["sat", "sun"], "start": "00:00", "end": "00:00"}]})
    verdict = evaluate(pol, PROD, utc(2026, 7, 1, 12))
    assert verdict.action == "refuse" and verdict.policies == ["nightly", "db-weekend"]
    # staging, no db tag: governed by nothing
    free = evaluate(pol, RunScope(environment="staging", tenant="acme"), utc(2026, 7, 1, 12))
    assert free.open and free.policies == [] and free.closes_at is None
    # both must be open at once: Saturday 01:00 Berlin (and all Saturday UTC)
    wait = evaluate(policies(nightly(), pol.policies[1].model_dump(mode="json")),
                    PROD, utc(2026, 7, 1, 12))
    assert wait.action == "wait" and wait.opens_at == utc(2026, 7, 4, 0)  # Sat 00:00 UTC


def test_no_window_within_the_horizon_is_refused() -> None:
    pol = policies({"name": "never", "zone": "UTC", "windows": [
        {"days": ["mon"], "start": "01:00", "end": "02:00"}],
        "blackouts": [{"start": "2026-01-01", "end": "2028-01-01", "reason": "frozen"}]})
    verdict = evaluate(pol, PROD, utc(2026, 7, 1))
    assert verdict.action == "refuse" and "no window opens within" in verdict.reason


@pytest.mark.parametrize(("doc", "needle"), [
    ({"policies": [{"name": "a", "zone": "Mars/Base"}]}, "policies.0.zone"),
    ({"policies": [{"name": "a", "zone": "UTC", "windows": [
        {"days": ["mon"], "start": "25:00", "end": "02:00"}]}]}, "policies.0.windows.0.start"),
    ({"policies": [{"name": "a", "zone": "UTC", "windows": [
        {"days": ["monday"], "start": "01:00", "end": "02:00"}]}]}, "windows.0.days.0"),
    ({"policies": [{"name": "a", "zone": "UTC", "blackouts": [
        {"start": "2026-02-02", "end": "2026-02-01", "reason": "x"}]}]}, "blackouts.0"),
    ({"policies": [{"name": "a", "zone": "UTC"}, {"name": "a", "zone": "UTC"}]}, "unique"),
    ({"policies": [{"name": "a", "zone": "UTC", "outside": "ignore"}]}, "policies.0.outside"),
    ({"policies": [{"name": "a", "zone": "UTC", "extra": 1}]}, "policies.0.extra"),
    ({"version": 2}, "version"),
])
def test_bad_policies_are_named(doc: dict, needle: str) -> None:
    with pytest.raises(WindowPolicyError) as err:
        parse_policies(doc, "windows.yaml")
    assert needle in str(err.value) and str(err.value).startswith("windows.yaml: ")


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        evaluate(policies(nightly()), PROD, datetime(2026, 7, 1))


def test_upstream_maintenance_window_check_is_recognised() -> None:
    assert is_window_check("Maintenance window scheduled and stakeholders notified")
    assert is_window_check("Change  Window approved")
    assert not is_window_check("Full system backup and disaster recovery plan activated")


def test_every_hour_of_a_dst_year_is_judged_like_the_wall_clock() -> None:
    """Attack: judge every hour of 2026 in New York (each quarter hour around its two clock
    changes) and compare with the wall clock."""
    pol = policies(nightly(zone="America/New_York", start="01:30", end="03:00"))
    at, end, mismatches, checked = utc(2026, 1, 1), utc(2027, 1, 1), 0, 0
    seen: set[datetime] = set()
    while at < end:
        local = at.astimezone(NEW_YORK)
        day_start = local_instant(local.date(), time(1, 30), NEW_YORK)
        day_end = local_instant(local.date(), time(3, 0), NEW_YORK)
        expected = day_start <= at < day_end
        if evaluate(pol, PROD, at).open != expected:
            mismatches += 1
        if expected:
            seen.add(day_start)
        checked += 1
        near_change = local.date() in (date(2026, 3, 8), date(2026, 11, 1))
        at += timedelta(minutes=15 if near_change else 60)
    print(f"instants judged: {checked}, mismatches: {mismatches}, windows: {len(seen)}")
    assert mismatches == 0 and len(seen) == 365
