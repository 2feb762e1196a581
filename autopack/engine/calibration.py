"""Budget calibration from the database: each finished phase of a project's runs as a sample, and
the advice per category (autopack/governance/calibrate.py)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from autopack.db.models import Phase, Project, Run
from autopack.engine.ledger import PHASE_COST_CAP, PHASE_TOKEN_CAP
from autopack.governance.calibrate import PhaseSample, calibrate
from autopack.states import PhaseState

FINISHED = (PhaseState.COMPLETE.value, PhaseState.FAILED.value)


def phase_samples(session: Session, project: Project | None, since: datetime | None) -> list[PhaseSample]:
    """The phases that completed or failed (runs of ``project``, updated since ``since``), oldest first."""
    q = (select(Phase).join(Run, Phase.run_id == Run.id).where(Phase.state.in_(FINISHED))
         .options(selectinload(Phase.attempts)).order_by(Phase.updated_at, Phase.id))
    if project is not None:
        q = q.where(Run.project_id == project.id)
    if since is not None:
        q = q.where(Phase.updated_at >= since)
    samples = []
    for ph in session.scalars(q):
        budget = ph.budget or {}
        stops = [a.failure or "" for a in ph.attempts if a.failure_class == "budget"]
        samples.append(PhaseSample(
            category=str(ph.spec.get("category", "")), completed=ph.state == PhaseState.COMPLETE.value,
            tokens=ph.tokens_used, cost_usd=ph.cost_usd, attempts=ph.attempts_used,
            token_cap=int(budget["token_cap"]) if budget.get("token_cap") is not None else None,
            cost_cap_usd=float(budget["cost_cap_usd"]) if budget.get("cost_cap_usd") is not None else None,
            stopped_at_token_cap=any(f.startswith(PHASE_TOKEN_CAP) for f in stops),
            stopped_at_cost_cap=any(f.startswith(PHASE_COST_CAP) for f in stops)))
    return samples


def budget_report(session: Session, project: Project | None, since: datetime | None, *, min_completed: int = 5) -> dict[str, Any]:
    advice = calibrate(phase_samples(session, project, since), min_completed=min_completed)
    return {"project": project.name if project is not None else None, "since": since.isoformat() if since else None,
            "min_completed": min_completed, "categories": [asdict(a) for a in advice],
            "note": "suggestions only: phase caps are set per category in config/strategy.yaml"}
