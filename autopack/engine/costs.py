"""Cost reports from the recorded model calls: per call, role, model, phase and run."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autopack.db.models import ModelCall, Phase, Project, Run
from autopack.engine.ledger import utc_day


def _add(bucket: dict[str, Any], c: Any) -> None:
    """Count call ``c`` (a ModelCall, or a row with its token and cost columns) in ``bucket``."""
    bucket["calls"] += 1
    bucket["input_tokens"] += c.input_tokens
    bucket["output_tokens"] += c.output_tokens
    bucket["cost_usd"] = round(bucket["cost_usd"] + c.cost_usd, 6)


def _new() -> dict[str, Any]:
    return {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}


def run_costs(session: Session, run: Run) -> dict[str, Any]:
    phases = {p.id: p.key for p in session.scalars(select(Phase).where(Phase.run_id == run.id))}
    # The figures only: whole rows would carry every call's prompt and answer.
    calls = session.execute(select(ModelCall.id, ModelCall.role, ModelCall.provider, ModelCall.model, ModelCall.phase_id,
                                   ModelCall.attempt_id, ModelCall.input_tokens, ModelCall.output_tokens, ModelCall.cost_usd,
                                   ModelCall.error, ModelCall.created_at)
                            .where(ModelCall.run_id == run.id).order_by(ModelCall.id)).all()
    by_role: dict[str, dict[str, Any]] = defaultdict(_new)
    by_model: dict[str, dict[str, Any]] = defaultdict(_new)
    by_phase: dict[str, dict[str, Any]] = defaultdict(_new)
    total = _new()
    for c in calls:
        for bucket in (by_role[c.role], by_model[c.model], by_phase[phases.get(c.phase_id or -1, "-")], total):
            _add(bucket, c)
    return {
        "run_id": run.id, "total": total, "by_role": dict(by_role), "by_model": dict(by_model), "by_phase": dict(by_phase),
        "calls": [{"id": c.id, "role": c.role, "provider": c.provider, "model": c.model, "phase": phases.get(c.phase_id or -1),
                   "attempt_id": c.attempt_id, "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                   "cost_usd": round(c.cost_usd, 6), "error": c.error, "at": c.created_at.isoformat()} for c in calls],
        "caps": {"token_cap": run.token_cap, "cost_cap_usd": run.cost_cap_usd, "tokens_used": run.tokens_used,
                 "cost_usd": round(run.cost_usd, 6)},
    }


def report(session: Session, project: Project | None, since: datetime | None) -> dict[str, Any]:
    # The figures only: whole rows carried every call's prompt and answer, to sum four numbers.
    q = (select(ModelCall.role, ModelCall.model, ModelCall.created_at, ModelCall.input_tokens, ModelCall.output_tokens,
                ModelCall.cost_usd, Run.id.label("run_id"), Project.name.label("project"))
         .join(Run, ModelCall.run_id == Run.id).join(Project, Run.project_id == Project.id))
    if project is not None:
        q = q.where(Project.id == project.id)
    if since is not None:
        # One instant whatever its offset (naive: UTC): SQLite's DateTime drops the zone, so a
        # since of 02:00+02:00 was compared as 02:00 UTC there.
        since = since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since.astimezone(timezone.utc)
        q = q.where(ModelCall.created_at >= since)
    by_project: dict[str, dict[str, Any]] = defaultdict(_new)
    by_day: dict[str, dict[str, Any]] = defaultdict(_new)
    by_role_model: dict[str, dict[str, Any]] = defaultdict(_new)
    by_run: dict[str, dict[str, Any]] = defaultdict(_new)
    total = _new()
    for c in session.execute(q):
        for bucket in (by_project[c.project], by_day[utc_day(c.created_at)], by_role_model[f"{c.role} · {c.model}"],
                       by_run[c.run_id], total):
            _add(bucket, c)
    return {"project": project.name if project else None, "since": since.isoformat() if since else None, "total": total,
            "by_project": dict(by_project), "by_day": dict(sorted(by_day.items())), "by_role_model": dict(by_role_model),
            "by_run": dict(by_run)}
