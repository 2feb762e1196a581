"""Provider quotas over rolling windows. Pure.

A window of period P at ``now`` holds the calls recorded after ``now - P`` (``engine/routing.py``
sums them from ``model_calls``). A provider is *near* its quota when, for any of its windows, the
usage in it reaches ``margin × limit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
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
class UsageTotals:
    tokens: int = 0
    requests: int = 0

    def of(self, kind: Kind) -> int:
        return self.tokens if kind == "tokens" else self.requests


@dataclass(frozen=True)
class QuotaPressure:
    window: QuotaWindow
    used: int

    def describe(self) -> str:
        return f"{self.window.kind} per {self.window.period}: {self.used} of {self.window.limit}"


def quota_pressure(windows: Sequence[QuotaWindow], usage: Mapping[str, UsageTotals],
                   margin: float = 0.9) -> QuotaPressure | None:
    """The first of ``windows`` where the usage (per period) reaches ``margin × limit``, or None."""
    if not 0.0 < margin <= 1.0:
        raise ValueError(f"margin {margin} is not within (0, 1]")
    for w in windows:
        used = usage.get(w.period, UsageTotals()).of(w.kind)
        if used >= margin * w.limit:
            return QuotaPressure(w, used)
    return None
