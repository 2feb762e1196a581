"""Model routing with quotas and outages. Pure.

Routing goes role → complexity → chain (``autopack.governance.escalation``): the chain's first model
is the one wanted; a model whose provider is marked down (an outage, until a time) or near one of its
quotas is skipped for the next in the chain.

A high-risk category never falls back to a *weaker* model; it stops with a clear reason instead.
Weaker means: when both models have a tier (proposed ``tier:`` in models.yaml, higher is stronger),
a lower tier; otherwise any model after the first in the chain (the conservative reading: without
tiers, nothing is known to be as strong as the model wanted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from autopack.config import ModelsConfig
from autopack.governance.quotas import QuotaWindow, UsageTotals, quota_pressure


@dataclass(frozen=True)
class Candidate:
    model: str
    provider: str
    tier: int | None = None


def candidates(models: ModelsConfig, chain: Sequence[str], tiers: Mapping[str, int] | None = None) -> list[Candidate]:
    """The chain's models with their providers (and tiers where known)."""
    tiers = tiers or {}
    return [Candidate(m, models.provider_of(m), tiers.get(m)) for m in chain]


@dataclass(frozen=True)
class ProviderState:
    """What is known of a provider now: until when it is down (and why), its usage per quota
    period (summed from ``model_calls`` by ``engine/routing.py``), its quota windows."""

    down_until: datetime | None = None
    down_reason: str = ""
    usage: Mapping[str, UsageTotals] = field(default_factory=dict)
    windows: Sequence[QuotaWindow] = ()


@dataclass(frozen=True)
class RouteDecision:
    model: str | None
    provider: str | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model, why)
    stop_reason: str | None = None

    @property
    def fell_back(self) -> bool:
        return self.model is not None and bool(self.skipped)


def is_weaker(candidate: Candidate, position: int, primary: Candidate) -> bool:
    if candidate.tier is not None and primary.tier is not None:
        return candidate.tier < primary.tier
    return position > 0


def route(role: str, complexity: str, category: str, high_risk: bool, chain: Sequence[Candidate],
          providers_state: Mapping[str, ProviderState], now: datetime, margin: float = 0.9) -> RouteDecision:
    """The first usable model of ``chain``, or none with the reason the phase must stop."""
    if not chain:
        return RouteDecision(None, None, [], f"no model configured for {role} at {complexity}")
    primary = chain[0]
    skipped: list[tuple[str, str]] = []
    for position, cand in enumerate(chain):
        if high_risk and is_weaker(cand, position, primary):
            skipped.append((cand.model, f"weaker than {primary.model}: high-risk category {category} never falls back to it"))
            continue
        state = providers_state.get(cand.provider, ProviderState())
        if state.down_until is not None and now < state.down_until:
            why = f" ({state.down_reason})" if state.down_reason else ""
            skipped.append((cand.model, f"provider {cand.provider} is down until {state.down_until.isoformat()}{why}"))
            continue
        pressure = quota_pressure(state.windows, state.usage, margin)
        if pressure is not None:
            skipped.append((cand.model, f"provider {cand.provider} is near its quota ({pressure.describe()})"))
            continue
        return RouteDecision(cand.model, cand.provider, skipped)
    if high_risk:
        stop = (f"high-risk category {category}: {primary.model} ({role}, {complexity}) is unavailable and no model as "
                f"strong is available; refusing to fall back to a weaker model")
    else:
        stop = f"every model of the {role} chain at {complexity} is unavailable"
    return RouteDecision(None, None, skipped, stop)


def backoff_seconds(attempt: int, rand: Callable[[], float], base: float = 1.0, cap: float = 60.0) -> float:
    """Delay before retry ``attempt`` (0 for the first): ``d = min(cap, base × 2**attempt)``, then
    "equal jitter": ``d/2 + rand() × d/2``, so within ``[d/2, d]``. ``rand`` returns a float in [0, 1)."""
    if attempt < 0:
        raise ValueError("attempt cannot be negative")
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    r = rand()
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"rand() gave {r}, not within [0, 1]")
    d = min(cap, base * 2.0 ** min(attempt, 1023))
    return d / 2 + r * d / 2
