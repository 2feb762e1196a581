from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from autopack.config import ModelsConfig
from autopack.governance.quotas import QuotaWindow, UsageTotals
from autopack.governance.routing import (
    Candidate,
    ProviderState,
    backoff_seconds,
    candidates,
    route,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
CHAIN = [Candidate("sonnet", "anthropic"), Candidate("gpt", "openai"), Candidate("local-big", "local")]
DOWN = ProviderState(down_until=NOW + timedelta(seconds=30), down_reason="HTTP 529")
FULL = ProviderState(usage={"hour": UsageTotals(tokens=950, requests=1)}, windows=[QuotaWindow("tokens", "hour", 1000)])


def test_candidates_from_config(models: ModelsConfig) -> None:
    assert candidates(models, ["haiku", "gpt"], {"gpt": 3}) == [Candidate("haiku", "anthropic", None), Candidate("gpt", "openai", 3)]


def test_primary_when_healthy() -> None:
    d = route("builder", "medium", "feature", False, CHAIN, {}, NOW)
    assert (d.model, d.provider, d.skipped, d.stop_reason, d.fell_back) == ("sonnet", "anthropic", [], None, False)


def test_outage_falls_back_for_a_normal_category() -> None:
    d = route("builder", "medium", "feature", False, CHAIN, {"anthropic": DOWN}, NOW)
    assert d.model == "gpt" and d.provider == "openai" and d.fell_back
    assert d.skipped == [("sonnet", f"provider anthropic is down until {DOWN.down_until.isoformat()} (HTTP 529)")]  # type: ignore[union-attr]


def test_down_until_in_the_past_is_up_again() -> None:
    state = ProviderState(down_until=NOW, down_reason="HTTP 529")
    assert route("builder", "medium", "feature", False, CHAIN, {"anthropic": state}, NOW).model == "sonnet"


def test_near_quota_is_skipped() -> None:
    d = route("builder", "medium", "feature", False, CHAIN, {"anthropic": FULL}, NOW)
    assert d.model == "gpt" and "near its quota (tokens per hour: 950 of 1000)" in d.skipped[0][1]
    assert route("builder", "medium", "feature", False, CHAIN, {"anthropic": FULL}, NOW, margin=0.96).model == "sonnet"


def test_everything_unavailable_stops() -> None:
    d = route("builder", "high", "feature", False, CHAIN, {"anthropic": DOWN, "openai": DOWN, "local": ProviderState(down_until=NOW + timedelta(days=1))}, NOW)
    assert d.model is None and not d.fell_back and len(d.skipped) == 3
    assert d.stop_reason == "every model of the builder chain at high is unavailable"


def test_high_risk_never_falls_back_without_tiers() -> None:
    d = route("builder", "high", "schema_contract_change", True, CHAIN, {"anthropic": DOWN}, NOW)
    assert d.model is None
    assert d.stop_reason is not None and "high-risk category schema_contract_change" in d.stop_reason
    assert "refusing to fall back to a weaker model" in d.stop_reason
    assert [m for m, _ in d.skipped] == ["sonnet", "gpt", "local-big"]
    assert "weaker than sonnet" in d.skipped[1][1]


def test_high_risk_uses_primary_when_up() -> None:
    assert route("builder", "high", "schema_contract_change", True, CHAIN, {}, NOW).model == "sonnet"


def test_high_risk_falls_back_to_an_equally_strong_tier_only() -> None:
    chain = [Candidate("sonnet", "anthropic", 2), Candidate("mini", "openai", 1), Candidate("gpt", "openai", 2), Candidate("opus", "x", 3)]
    d = route("auditor", "high", "security_auth_change", True, chain, {"anthropic": DOWN}, NOW)
    assert d.model == "gpt" and [m for m, _ in d.skipped] == ["sonnet", "mini"]
    # the same chain for a normal category takes the first available, however weak
    assert route("auditor", "high", "feature", False, chain, {"anthropic": DOWN}, NOW).model == "mini"
    # a stronger one qualifies too
    d2 = route("auditor", "high", "security_auth_change", True, chain, {"anthropic": DOWN, "openai": DOWN}, NOW)
    assert d2.model == "opus"


def test_unknown_tier_on_either_side_counts_as_weaker() -> None:
    chain = [Candidate("sonnet", "anthropic", None), Candidate("gpt", "openai", 5)]
    assert route("builder", "high", "x", True, chain, {"anthropic": DOWN}, NOW).model is None


def test_empty_chain() -> None:
    d = route("builder", "low", "feature", False, [], {}, NOW)
    assert d.model is None and d.stop_reason == "no model configured for builder at low"


def test_backoff_grows_exponentially_within_jitter_bounds() -> None:
    assert [backoff_seconds(a, lambda: 1.0) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_seconds(a, lambda: 0.0) for a in range(4)] == [0.5, 1, 2, 4]
    assert backoff_seconds(3, lambda: 0.5) == 6.0
    assert backoff_seconds(2, lambda: 0.0, base=0.5, cap=1.5) == 0.75


def test_backoff_huge_attempt_is_capped_not_overflowing() -> None:
    assert backoff_seconds(10_000, lambda: 1.0, cap=30.0) == 30.0


@pytest.mark.parametrize(("attempt", "r", "kw"), [(-1, 0.5, {}), (0, 1.5, {}), (0, -0.1, {}), (0, 0.5, {"base": 0}), (0, 0.5, {"cap": -1})])
def test_backoff_bad_inputs(attempt: int, r: float, kw: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        backoff_seconds(attempt, lambda: r, **kw)
