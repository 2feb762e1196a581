"""Budget calibration (the "cost tuning" of DESIGN's maintenance work): from what the phases of a
project really spent, per category, the phase token and cost caps that would fit them.

Pure: samples in, advice out. The operator decides; nothing here edits ``config/strategy.yaml``.
A phase's cap bounds all its attempts together, and a call that does not fit ends the whole run
(``DONE_FAILED_TOKEN_CAP_EXCEEDED`` / ``BUDGET_EXHAUSTED``), so the advice errs on the side of room:
the larger of the 90th percentile with headroom and the largest phase that completed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# (default, lowest, highest) of a report's window in days and of the completed phases a category
# needs before a cap is suggested: what the CLI and the API accept.
DAYS = (30, 1, 3650)
MIN_COMPLETED = (5, 1, 1000)


@dataclass(frozen=True)
class PhaseSample:
    """One finished phase: its category, how it ended, what it spent and the caps it had."""

    category: str
    completed: bool
    tokens: int
    cost_usd: float
    attempts: int
    token_cap: int | None
    cost_cap_usd: float | None
    stopped_at_token_cap: bool  # a call did not fit the phase's own token cap
    stopped_at_cost_cap: bool = False  # ... or its cost cap


@dataclass(frozen=True)
class CategoryAdvice:
    category: str
    phases: int
    completed: int
    stopped_at_cap: int
    tokens_p50: int | None
    tokens_p90: int | None
    tokens_max: int | None
    cost_p90_usd: float | None
    attempts_mean: float | None
    token_cap: int | None
    cost_cap_usd: float | None
    suggested_token_cap: int | None
    suggested_cost_cap_usd: float | None
    advice: str  # "raise", "lower", "keep" or "too few phases"
    reason: str


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _round_up(value: float, step: float) -> float:
    # round() first: 1.1 / 0.05 is 22.000000000000004 in floating point, which ceil would make 23.
    return math.ceil(round(value / step, 9)) * step


def advise(category: str, samples: Sequence[PhaseSample], *, min_completed: int = 5, headroom: float = 1.5,
           lower_below: float = 0.4) -> CategoryAdvice:
    """The advice for one category. Caps are compared with the most recent sample's (the one in force)."""
    done = [s for s in samples if s.completed]
    token_stops = sum(1 for s in samples if s.stopped_at_token_cap)
    cost_stops = sum(1 for s in samples if s.stopped_at_cost_cap)
    stopped = sum(1 for s in samples if s.stopped_at_token_cap or s.stopped_at_cost_cap)
    current = samples[-1] if samples else None
    token_cap = current.token_cap if current else None
    cost_cap = current.cost_cap_usd if current else None
    if not done:
        stats: dict[str, object] = dict(tokens_p50=None, tokens_p90=None, tokens_max=None, cost_p90_usd=None, attempts_mean=None)
    else:
        tokens = [float(s.tokens) for s in done]
        stats = dict(tokens_p50=round(percentile(tokens, 0.5)), tokens_p90=round(percentile(tokens, 0.9)),
                     tokens_max=int(max(tokens)), cost_p90_usd=round(percentile([s.cost_usd for s in done], 0.9), 6),
                     attempts_mean=round(sum(s.attempts for s in done) / len(done), 2))
    base = dict(category=category, phases=len(samples), completed=len(done), stopped_at_cap=stopped,
                token_cap=token_cap, cost_cap_usd=cost_cap, **stats)
    if len(done) < min_completed:
        return CategoryAdvice(**base, suggested_token_cap=token_cap, suggested_cost_cap_usd=cost_cap,  # type: ignore[arg-type]
                              advice="too few phases", reason=f"{len(done)} completed phases; at least {min_completed} are needed")
    tokens = [float(s.tokens) for s in done]
    costs = [s.cost_usd for s in done]
    # At least one rounding step: a free local model spends $0, and a cap of 0 is no cap the
    # configuration accepts (nor one a phase could run under).
    want_tokens = max(1000, int(_round_up(max(percentile(tokens, 0.9) * headroom, max(tokens)), 1000)))
    want_cost = max(0.05, round(_round_up(max(percentile(costs, 0.9) * headroom, max(costs)), 0.05), 2))
    # Phases stopped at a cap needed more than it gave: never suggest less than half again of that cap.
    if token_stops and token_cap is not None:
        want_tokens = max(want_tokens, int(_round_up(token_cap * 1.5, 1000)))
    if cost_stops and cost_cap is not None:
        want_cost = max(want_cost, round(_round_up(cost_cap * 1.5, 0.05), 2))
    if stopped or (token_cap is not None and want_tokens > token_cap) or (cost_cap is not None and want_cost > cost_cap):
        advice = "raise"
        # Raising one cap never cuts the other: the phases stopped at the first spent what they did
        # under the second, and would stop on it sooner (lowering is the "lower" advice's, alone).
        if token_cap is not None:
            want_tokens = max(want_tokens, token_cap)
        if cost_cap is not None:
            want_cost = max(want_cost, cost_cap)
        reason = (f"{stopped} of {len(samples)} phases stopped at the cap" if stopped
                  else "the largest completed phases come close to the cap")
    elif (token_cap is not None and want_tokens < token_cap * lower_below) and (cost_cap is None or want_cost < cost_cap * lower_below):
        advice = "lower"
        reason = f"completed phases use at most {int(max(tokens))} tokens; a lower cap stops a runaway phase sooner"
    else:
        advice, want_tokens, want_cost = "keep", token_cap or want_tokens, cost_cap if cost_cap is not None else want_cost
        reason = "the cap fits what completed phases spend"
    return CategoryAdvice(**base, suggested_token_cap=want_tokens, suggested_cost_cap_usd=want_cost,  # type: ignore[arg-type]
                          advice=advice, reason=reason)


def calibrate(samples: Iterable[PhaseSample], *, min_completed: int = 5, headroom: float = 1.5) -> list[CategoryAdvice]:
    """Advice per category (sorted by name), samples in the order they finished."""
    by_category: dict[str, list[PhaseSample]] = defaultdict(list)
    for s in samples:
        by_category[s.category].append(s)
    return [advise(c, by_category[c], min_completed=min_completed, headroom=headroom) for c in sorted(by_category)]
