from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from autopack.governance.quotas import QuotaWindow, UsageRecord, UsageTotals, near_quota, quota_pressure, totals_by_period, usage_in_window

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def rec(ago: timedelta, tokens: int, provider: str = "anthropic", requests: int = 1) -> UsageRecord:
    return UsageRecord(NOW - ago, provider, tokens, requests)


RECORDS = [
    rec(timedelta(minutes=5), 100),
    rec(timedelta(minutes=59), 200, requests=2),
    rec(timedelta(hours=1), 400),  # exactly one hour ago: outside the hour window
    rec(timedelta(hours=5), 1000),
    rec(timedelta(days=1), 2000),  # exactly a day: outside the day window
    rec(timedelta(days=3), 4000),
    rec(timedelta(days=8), 8000),
    rec(timedelta(minutes=1), 50_000, provider="openai"),
    rec(-timedelta(minutes=1), 70_000),  # in the future: not counted
]


@pytest.mark.parametrize(("period", "tokens", "requests"), [
    ("hour", 300, 3), ("day", 1700, 5), ("week", 7700, 7),
])
def test_usage_in_window(period: str, tokens: int, requests: int) -> None:
    assert usage_in_window(RECORDS, NOW, period, "anthropic") == UsageTotals(tokens, requests)  # type: ignore[arg-type]


def test_usage_all_providers() -> None:
    assert usage_in_window(RECORDS, NOW, "hour").tokens == 50_300
    assert usage_in_window([], NOW, "week") == UsageTotals(0, 0)


@pytest.mark.parametrize(("windows", "near"), [
    ([QuotaWindow("tokens", "hour", 400)], False),  # 300 < 360
    ([QuotaWindow("tokens", "hour", 333)], True),  # 300 >= 299.7
    ([QuotaWindow("requests", "hour", 4)], False),  # 3 < 3.6
    ([QuotaWindow("requests", "hour", 3)], True),
    ([QuotaWindow("tokens", "day", 1000), QuotaWindow("tokens", "hour", 10_000)], True),
    ([QuotaWindow("tokens", "week", 100_000)], False),
    ([], False),
])
def test_near_quota(windows: list[QuotaWindow], near: bool) -> None:
    assert near_quota("anthropic", RECORDS, windows, NOW) is near


def test_margin() -> None:
    w = [QuotaWindow("tokens", "hour", 400)]
    assert near_quota("anthropic", RECORDS, w, NOW, margin=0.75)  # 300 >= 300
    assert not near_quota("anthropic", RECORDS, w, NOW, margin=0.76)
    with pytest.raises(ValueError):
        near_quota("anthropic", RECORDS, w, NOW, margin=0)


def test_other_providers_usage_does_not_count() -> None:
    assert not near_quota("anthropic", RECORDS, [QuotaWindow("tokens", "hour", 1000)], NOW)
    assert near_quota("openai", RECORDS, [QuotaWindow("tokens", "hour", 50_000)], NOW)


def test_pressure_names_the_window() -> None:
    ws = [QuotaWindow("tokens", "week", 1_000_000), QuotaWindow("tokens", "day", 1800)]
    p = quota_pressure(ws, totals_by_period(RECORDS, "anthropic", ws, NOW))
    assert p is not None and p.window.period == "day" and p.used == 1700
    assert p.describe() == "tokens per day: 1700 of 1800"


@pytest.mark.parametrize("args", [("tokens", "month", 5), ("cost", "day", 5), ("tokens", "day", 0)])
def test_bad_windows(args: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        QuotaWindow(*args)
