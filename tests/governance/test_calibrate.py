"""Budget calibration advice (autopack/governance/calibrate.py) on plain samples."""

from __future__ import annotations

import pytest

from autopack.governance.calibrate import PhaseSample, advise, calibrate, percentile
from autopack.strategy import CategoryBudget


def _s(tokens: int, *, category: str = "feature", completed: bool = True, cap: int = 60000, cost: float = 0.01,
       cost_cap: float = 2.0, attempts: int = 1, stopped: bool = False) -> PhaseSample:
    return PhaseSample(category, completed, tokens, cost, attempts, cap, cost_cap, stopped_at_token_cap=stopped)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([5.0], 0.9) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 0.0, 20.0, 30.0, 40.0], 0.9) == pytest.approx(36.0)
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_too_few_completed_phases_suggest_nothing_new() -> None:
    a = advise("docs", [_s(1000), _s(2000, completed=False)])
    assert (a.advice, a.phases, a.completed, a.suggested_token_cap, a.suggested_cost_cap_usd) == ("too few phases", 2, 1, 60000, 2.0)
    assert a.reason == "1 completed phases; at least 5 are needed" and a.tokens_max == 1000


def test_far_under_the_cap_suggests_a_lower_one_that_still_fits_the_largest_phase() -> None:
    a = advise("feature", [_s(t, cost=0.004) for t in (2000, 2500, 3000, 3500, 9000)])
    assert a.advice == "lower" and a.tokens_p50 == 3000 and a.tokens_max == 9000
    assert a.suggested_token_cap == 11000  # the larger of p90 x 1.5 (6800 x 1.5 = 10200) and the max (9000), up to 1000s
    assert a.suggested_cost_cap_usd == 0.05 and a.attempts_mean == 1.0


def test_phases_stopped_at_the_cap_raise_it_by_at_least_half() -> None:
    samples = [_s(t, cap=10000) for t in (3000, 4000, 5000, 6000, 7000)] + [_s(10000, cap=10000, completed=False, stopped=True)]
    a = advise("feature", samples)
    assert a.advice == "raise" and a.stopped_at_cap == 1 and a.suggested_token_cap == 15000
    assert a.reason == "1 of 6 phases stopped at the cap"


def test_completed_phases_near_the_cap_raise_it() -> None:
    a = advise("tests", [_s(t, cap=10000, category="tests") for t in (6000, 7000, 8000, 9000, 9900)])
    assert a.advice == "raise" and a.suggested_token_cap == 15000  # p90 9540 x 1.5 = 14310 -> 15000


def test_a_cap_that_fits_is_kept_and_the_current_cap_is_the_newest_samples() -> None:
    samples = [_s(t, cap=20000) for t in (5000, 6000, 7000, 8000)] + [_s(9000, cap=16000)]
    a = advise("feature", samples)
    assert a.advice == "keep" and a.token_cap == 16000 and a.suggested_token_cap == 16000 and a.suggested_cost_cap_usd == 2.0


def test_calibrate_groups_by_category_in_name_order() -> None:
    out = calibrate([_s(100, category="tests"), _s(100, category="bugfix"), _s(200, category="tests")], min_completed=1)
    assert [(a.category, a.phases) for a in out] == [("bugfix", 1), ("tests", 2)]


def test_a_cost_cap_stop_raises_the_cost_cap_only_and_caps_round_exactly() -> None:
    samples = [_s(t, cap=10000, cost=0.5, cost_cap=1.1) for t in (3000, 3100, 3200, 3300, 3400)]
    stopped = PhaseSample("feature", False, 3500, 1.1, 2, 10000, 1.1, stopped_at_token_cap=False, stopped_at_cost_cap=True)
    a = advise("feature", [*samples, stopped])
    assert a.advice == "raise" and a.stopped_at_cap == 1
    assert a.suggested_cost_cap_usd == 1.65  # 1.1 x 1.5, exactly
    assert a.suggested_token_cap == 10000  # neither pushed up by the cost stop nor cut while raising


def _spent(tokens: int, cost: float, *, cap: int = 10000, cost_cap: float = 2.0, stopped: bool = False,
       completed: bool = True) -> PhaseSample:
    return PhaseSample("feature", completed, tokens, cost, 1, cap, cost_cap, stopped_at_token_cap=stopped)


def test_a_free_local_model_gets_no_zero_cost_cap() -> None:
    """A free model (pricing {input: 0, output: 0}) spends $0: the advice is at least one rounding
    step ($0.05), a cap the configuration accepts (it suggested 0.0, which CategoryBudget refuses)."""
    a = advise("feature", [_spent(t, 0.0) for t in (9000, 9200, 9400, 9600, 9800)])
    assert a.advice == "raise"
    CategoryBudget(token_cap=a.suggested_token_cap, cost_cap_usd=a.suggested_cost_cap_usd)  # raises on 0.0


def test_raise_for_token_stops_does_not_cut_the_cost_cap_below_what_the_stopped_phase_spent() -> None:
    """Most phases are small; the big one stopped at the token cap (10000 tokens, $0.105). Raising the
    token cap does not cut the cost cap: it computed it from the completed phases only ($2.00 became
    $0.05), which would have stopped that phase sooner, on cost."""
    done = [_spent(t, t * 0.0000105) for t in (1600, 1800, 2000, 2200, 2400)]
    a = advise("feature", [*done, _spent(10000, 0.105, stopped=True, completed=False)])
    assert a.advice == "raise" and a.suggested_token_cap == 15000
    assert a.suggested_cost_cap_usd is not None and a.suggested_cost_cap_usd >= 0.105, a
