"""Provider quotas over rolling windows, from usage records. Pure.

A window of period P at ``now`` holds the records with ``now - P < timestamp <= now`` (records from
the future are not counted). A provider is *near* its quota when, for any of its windows, the usage
in it reaches ``margin × limit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Kind = Literal["tokens", "requests"]
Period = Literal["hour", "day", "week"]
PERIODS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


@dataclass(frozen=True)
class QuotaWindow:
    kind: Kind
    period: Period
    limit: int

    def __post_init__(self) -> None:
        if self.kind not in ("tokens", "requests"):
            raise ValueError(f"unknown quota kind {self.kind!r}")
        if self.period not in PERIODS:
            raise ValueError(f"unknown quota period {self.period!r}")
        if self.limit <= 0:
            raise ValueError("a quota limit must be positive")


@dataclass(frozen=True)
class UsageRecord:
    timestamp: datetime
    provider: str
    tokens: int
    requests: int = 1


@dataclass(frozen=True)
class UsageTotals:
    tokens: int = 0
    requests: int = 0

    def of(self, kind: Kind) -> int:
        return self.tokens if kind == "tokens" else self.requests


def usage_in_window(records: Iterable[UsageRecord], now: datetime, period: Period, provider: str | None = None) -> UsageTotals:
    """Tokens and requests of the records in the window ending at ``now`` (of one provider, if named)."""
    start = now - PERIODS[period]
    tokens = requests = 0
    for r in records:
        if (provider is None or r.provider == provider) and start < r.timestamp <= now:
            tokens += r.tokens
            requests += r.requests
    return UsageTotals(tokens, requests)


@dataclass(frozen=True)
class QuotaPressure:
    window: QuotaWindow
    used: int

    def describe(self) -> str:
        return f"{self.window.kind} per {self.window.period}: {self.used} of {self.window.limit}"


def totals_by_period(records: Sequence[UsageRecord], provider: str, windows: Sequence[QuotaWindow],
                     now: datetime) -> dict[str, UsageTotals]:
    """``provider``'s usage in each period that one of ``windows`` names, from plain records."""
    return {w.period: usage_in_window(records, now, w.period, provider) for w in windows}


def quota_pressure(windows: Sequence[QuotaWindow], usage: Mapping[str, UsageTotals],
                   margin: float = 0.9) -> QuotaPressure | None:
    """The first of ``windows`` where the usage (per period, as ``totals_by_period`` or a database
    query gives it) reaches ``margin × limit``, or None."""
    if not 0.0 < margin <= 1.0:
        raise ValueError(f"margin {margin} is not within (0, 1]")
    for w in windows:
        used = usage.get(w.period, UsageTotals()).of(w.kind)
        if used >= margin * w.limit:
            return QuotaPressure(w, used)
    return None


def near_quota(provider: str, records: Sequence[UsageRecord], windows: Sequence[QuotaWindow], now: datetime,
               margin: float = 0.9) -> bool:
    """Whether ``provider``'s usage among ``records`` reaches ``margin`` of any of ``windows``."""
    return quota_pressure(windows, totals_by_period(records, provider, windows, now), margin) is not None
