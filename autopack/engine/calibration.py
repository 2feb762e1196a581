"""Budget calibration from the database: each finished phase of a project's runs as a sample, and
the advice per category (autopack/governance/calibrate.py)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from autopack.db.models import Attempt, Phase, Project, Run
from autopack.engine.leases import db_now
from autopack.engine.ledger import PHASE_COST_CAP, PHASE_TOKEN_CAP
from autopack.governance.calibrate import DAYS, MIN_COMPLETED, PhaseSample, calibrate
from autopack.states import PhaseState

FINISHED = (PhaseState.COMPLETE.value, PhaseState.FAILED.value)


def _finished(query: Select[Any], project: Project | None, since: datetime | None) -> Select[Any]:
    query = query.join(Run, Phase.run_id == Run.id).where(Phase.state.in_(FINISHED))
    if project is not None:
        query = query.where(Run.project_id == project.id)
    if since is not None:
        query = query.where(Phase.updated_at >= since)
    return query


def phase_samples(session: Session, project: Project | None, since: datetime | None) -> list[PhaseSample]:
    """The phases that completed or failed (runs of ``project``, updated since ``since``), oldest first."""
    # Of the attempts only the budget stops' reasons are needed, not every attempt with its JSON.
    stops: dict[int, list[str]] = {}
    budget_stops = _finished(select(Attempt.phase_id, Attempt.failure).join(Phase, Attempt.phase_id == Phase.id),
                             project, since).where(Attempt.failure_class == "budget")
    for phase_id, failure in session.execute(budget_stops):
        stops.setdefault(phase_id, []).append(failure or "")
    samples = []
    for ph in session.scalars(_finished(select(Phase), project, since).order_by(Phase.updated_at, Phase.id)):
        budget = ph.budget or {}
        reasons = stops.get(ph.id, [])
        samples.append(PhaseSample(
            category=str(ph.spec.get("category", "")), completed=ph.state == PhaseState.COMPLETE.value,
            tokens=ph.tokens_used, cost_usd=ph.cost_usd, attempts=ph.attempts_used,
            token_cap=int(budget["token_cap"]) if budget.get("token_cap") is not None else None,
            cost_cap_usd=float(budget["cost_cap_usd"]) if budget.get("cost_cap_usd") is not None else None,
            stopped_at_token_cap=any(f.startswith(PHASE_TOKEN_CAP) for f in reasons),
            stopped_at_cost_cap=any(f.startswith(PHASE_COST_CAP) for f in reasons)))
    return samples


def budget_report(session: Session, project: Project | None, days: int = DAYS[0], *, min_completed: int = MIN_COMPLETED[0]) -> dict[str, Any]:
    """The calibration of the phases finished in the last ``days`` days, on the database's clock."""
    since = db_now(session) - timedelta(days=days)
    advice = calibrate(phase_samples(session, project, since), min_completed=min_completed)
    return {"project": project.name if project is not None else None, "since": since.isoformat(),
            "min_completed": min_completed, "categories": [asdict(a) for a in advice],
            "note": "suggestions only: phase caps are set per category in config/strategy.yaml"}
