"""Model routing against the database: what each provider used in its quota windows and whether its
last call was an outage, read from ``model_calls``, fed to the pure ``governance.routing.route``."""

from __future__ import annotations

import dataclasses

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from autopack.config import ModelsConfig
from autopack.db.models import ModelCall, as_utc
from autopack.engine.leases import db_now
from autopack.governance.quotas import PERIODS, QuotaWindow, UsageTotals
from autopack.governance.routing import ProviderState, RouteDecision, candidates, route
from autopack.strategy import RoutingConfig

# How an outage is recorded on a model call (``ModelCall.error`` starts with the exception's name).
OUTAGE_PREFIX = "ProviderUnavailable"


def provider_state(session: Session, models: ModelsConfig, provider: str, now: datetime, cooldown_s: float) -> ProviderState:
    """``provider``'s quota windows with its recorded usage in each, and until when it counts as down."""
    cfg = models.providers.get(provider)
    windows = [QuotaWindow(q.kind, q.period, q.limit) for q in (cfg.quotas if cfg else [])]
    usage: dict[str, UsageTotals] = {}
    periods = sorted({w.period for w in windows}, key=lambda p: PERIODS[p])
    columns: list[Any] = []
    # One statement: every window in one pass over the longest (per period, its calls' tokens and
    # their count) and, when outages count, the provider's last call.
    tokens = ModelCall.input_tokens + ModelCall.output_tokens
    for period in periods:
        inside = ModelCall.created_at > now - PERIODS[period]
        columns += [func.coalesce(func.sum(case((inside, tokens), else_=0)), 0), func.count(case((inside, ModelCall.id)))]
    if cooldown_s > 0:
        # By created_at (then id): the (provider, created_at) index serves it with one step back; by
        # id alone every call the provider ever made was read and sorted, twice per routing decision.
        last = (select(ModelCall.id).where(ModelCall.provider == provider)
                .order_by(ModelCall.created_at.desc(), ModelCall.id.desc()).limit(1).correlate(None).scalar_subquery())
        columns += [select(ModelCall.created_at).where(ModelCall.id == last).correlate(None).scalar_subquery(),
                    select(ModelCall.error).where(ModelCall.id == last).correlate(None).scalar_subquery()]
    if not columns:
        return ProviderState(down_until=None, down_reason="", usage=usage, windows=windows)
    query = select(*columns)
    if periods:
        query = query.where(ModelCall.provider == provider, ModelCall.created_at > now - PERIODS[periods[-1]])
    row = session.execute(query).one()
    for i, period in enumerate(periods):
        usage[period] = UsageTotals(int(row[2 * i]), int(row[2 * i + 1]))
    down_until, reason = None, ""
    if cooldown_s > 0:
        last_at, last_error = row[2 * len(periods)], row[2 * len(periods) + 1]
        if last_at is not None and (last_error or "").startswith(OUTAGE_PREFIX):
            down_until = as_utc(last_at) + timedelta(seconds=cooldown_s)
            reason = last_error[len(OUTAGE_PREFIX) + 2:][:200]
    return ProviderState(down_until=down_until, down_reason=reason, usage=usage, windows=windows)


def choose_model(session: Session, models: ModelsConfig, routing: RoutingConfig, *, role: str, complexity: str,
                 category: str, high_risk: bool, chain: Sequence[str], now: datetime | None = None) -> RouteDecision:
    """The first model of ``chain`` whose provider is neither near a quota nor recently out; never a
    weaker one for a high-risk category (then ``stop_reason`` says why).

    When every provider of a chain is only recently out (none near a quota), the outages are taken
    as possibly over and the chain is routed on quotas alone: the call then either succeeds or fails
    as a provider error, which the run's health budget bounds. A high-risk category takes that retry
    only with its own first model (trying it again is no downgrade): an outage of its provider in
    another project's call no longer ends the run before any call of its own.

    ``now`` defaults to :func:`lease_clock`'s (the database server's on PostgreSQL), the clock every
    call's ``created_at`` is written on: a worker whose own clock ran behind would see a provider
    that went down as down for that much longer, and a quota window hold calls it should not."""
    now = now or db_now(session)
    chain = list(dict.fromkeys(chain))
    cands = candidates(models, chain)
    providers = {c.provider for c in cands}
    states = {p: provider_state(session, models, p, now, routing.outage_cooldown_s) for p in providers}
    decision = route(role, complexity, category, high_risk, cands, states, now, routing.quota_margin)
    if decision.model is None:
        quota_only = {p: dataclasses.replace(st, down_until=None, down_reason="") for p, st in states.items()}
        retry = route(role, complexity, category, high_risk, cands, quota_only, now, routing.quota_margin)
        if retry.model is not None and (not high_risk or retry.model == chain[0]):
            return dataclasses.replace(retry, skipped=[*decision.skipped, (retry.model, "every provider was recently out: trying again")])
    return decision


def fallback_chain(chosen: str, fallback: Sequence[str], skipped: Iterable[str], keep_provider: bool) -> list[str]:
    """What a call moves along on an outage: the chosen model, then the role's fallback models that
    routing did not skip; only the chosen one when the phase must keep it (high-risk, dual audit)."""
    if keep_provider:
        return [chosen]
    left_out = set(skipped)
    return list(dict.fromkeys([chosen, *(m for m in fallback if m not in left_out)]))


def routing_record(decision: RouteDecision, *, role: str, wanted: str, level: str, why: str,
                   fallbacks: Iterable[str] = ()) -> dict[str, Any]:
    """What ``GET /runs/<id>`` shows of a routing decision on an attempt."""
    return {
        "role": role,
        "level": level,
        "wanted": wanted,
        "model": decision.model,
        "why": why,
        "skipped": [{"model": m, "reason": r} for m, r in decision.skipped],
        "fallbacks": list(fallbacks),
        "stop_reason": decision.stop_reason,
    }
