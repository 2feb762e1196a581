from __future__ import annotations

import pytest

from autopack.governance.quotas import QuotaWindow, UsageTotals, quota_pressure

USAGE = {"hour": UsageTotals(300, 3), "day": UsageTotals(1700, 5), "week": UsageTotals(7700, 7)}


@pytest.mark.parametrize(("windows", "near"), [
    ([QuotaWindow("tokens", "hour", 400)], False),  # 300 < 360
    ([QuotaWindow("tokens", "hour", 333)], True),  # 300 >= 299.7
    ([QuotaWindow("requests", "hour", 4)], False),  # 3 < 3.6
    ([QuotaWindow("requests", "hour", 3)], True),
    ([QuotaWindow("tokens", "day", 1000), QuotaWindow("tokens", "hour", 10_000)], True),
    ([QuotaWindow("tokens", "week", 100_000)], False),
    ([], False),
])
def test_pressure(windows: list[QuotaWindow], near: bool) -> None:
    assert (quota_pressure(windows, USAGE) is not None) is near


def test_margin_and_missing_periods() -> None:
    w = [QuotaWindow("tokens", "hour", 400)]
    assert quota_pressure(w, USAGE, margin=0.75) is not None  # 300 >= 300
    assert quota_pressure(w, USAGE, margin=0.76) is None
    assert quota_pressure(w, {}) is None  # no usage recorded for the period
    with pytest.raises(ValueError):
        quota_pressure(w, USAGE, margin=0)


def test_pressure_names_the_window() -> None:
    p = quota_pressure([QuotaWindow("tokens", "week", 1_000_000), QuotaWindow("tokens", "day", 1800)], USAGE)
    assert p is not None and p.window.period == "day" and p.used == 1700
    assert p.describe() == "tokens per day: 1700 of 1800"


@pytest.mark.parametrize("args", [("tokens", "month", 5), ("cost", "day", 5), ("tokens", "day", 0)])
def test_bad_windows(args: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        QuotaWindow(*args)
