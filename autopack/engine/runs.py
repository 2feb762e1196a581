"""Creating, cancelling and describing runs (used by the API and the CLI)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from autopack.config import AppConfig
from autopack.db.models import Attempt, BudgetReservation, Event, Phase, Project, Run, Tier, as_utc
from autopack.engine.leases import lease_clock
from autopack.engine.store import emit, transition
from autopack.errors import Conflict, GitError, NotFound, PlanError
from autopack.plan import Plan
from autopack.states import RunState, is_terminal_run
from autopack.strategy import CompiledStrategy, compile_strategy
from autopack.workspace.git import Git


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"project {name!r} is not registered (autopack project add {name} PATH)")
    return project


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def check_base_branch(project: Project, plan: Plan) -> None:
    """Raise ``PlanError`` naming ``base_branch`` when the project's repository, if this process can
    read it, has no such branch: a typo is refused at submission, not found by the run's first step.
    (A web process on a machine without the repository leaves it to that step.)"""
    branch = plan.base_branch or project.base_branch
    repo = Path(project.repo_path)
    if not (repo / ".git").exists():
        return
    try:
        found = Git(repo).rev_parse(f"refs/heads/{branch}")
    except GitError:
        return
    if found is None:
        field = "base_branch" if plan.base_branch else "project"
        raise PlanError(field, f"the repository of project {project.name!r} has no branch {branch!r}")


def compile_for(plan: Plan, config: AppConfig) -> CompiledStrategy:
    return compile_strategy(plan, config.strategy)


def request_fingerprint(body: Any) -> str:
    """sha256 of a request body as canonical JSON (sorted keys, no spaces): what an idempotent retry
    must repeat. Taken from the body as sent, not from the parsed plan, so a retry that reaches a
    newer version of the API (whose plan model fills in a new default) still matches."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def run_for_key(session: Session, project: Project, idempotency_key: str, fingerprint: str) -> Run | None:
    """The run an earlier submission with ``idempotency_key`` created in ``project``, or ``None``.
    The same key with another request (``fingerprint``) is refused with :class:`Conflict`: a client
    that reused a key by mistake must not get another plan's run back."""
    run = session.scalar(select(Run).where(Run.project_id == project.id, Run.idempotency_key == idempotency_key))
    if run is not None and run.idempotency_fingerprint != fingerprint:
        raise Conflict(f"Idempotency-Key {idempotency_key!r} was used for run {run.id} with a different plan")
    return run


def create_run(session: Session, plan: Plan, config: AppConfig, *, idempotency_key: str | None = None,
               idempotency_fingerprint: str | None = None) -> Run:
    """Insert a QUEUED run with its tiers and phases; the caller commits and then enqueues ``start_run``.

    With ``idempotency_key`` the run records it; a second run with the same key in the project
    fails at flush (unique): the caller looks the first one up with :func:`run_for_key`."""
    project = get_project(session, plan.project)
    check_base_branch(project, plan)
    strategy = compile_for(plan, config)
    run = Run(
        project_id=project.id,
        state=RunState.QUEUED,
        plan=plan.model_dump(mode="json"),
        strategy=strategy.model_dump(mode="json"),
        base_branch=plan.base_branch or project.base_branch,
        branch="",
        commit_epoch=int(time.time()),
        token_cap=strategy.run.token_cap,
        cost_cap_usd=strategy.run.cost_cap_usd,
        # The reconciler ends a run past its maximum runtime by the database's clock (PostgreSQL).
        created_at=lease_clock(session),
        idempotency_key=idempotency_key,
        idempotency_fingerprint=idempotency_fingerprint,
    )
    session.add(run)
    session.flush()
    run.branch = f"autopack/{run.id}"
    index = 0
    for t_index, tier in enumerate(plan.tiers):
        tier_row = Tier(run_id=run.id, key=tier.id, name=tier.name, index=t_index)
        session.add(tier_row)
        session.flush()
        for phase in tier.phases:
            budget = strategy.for_phase(phase.id)
            session.add(
                Phase(
                    run_id=run.id,
                    tier_id=tier_row.id,
                    key=phase.id,
                    index=index,
                    spec=phase.model_dump(mode="json"),
                    budget=budget.model_dump(mode="json"),
                    max_attempts=budget.max_attempts,
                )
            )
            index += 1
    session.flush()
    emit(session, run.id, "run.queued", project=project.name, phases=index)
    return run


def cancel_run(session: Session, run_id: str) -> Run:
    """Cancel a run that has not ended (``Conflict`` if it has).

    The run's row is locked first and read again: a worker moving the run at that moment (QUEUED to
    PLANNING, or to its end) commits before the cancel reads it, instead of the cancel's compare-and-
    set finding the row changed under it."""
    run = session.get(Run, run_id, with_for_update={"key_share": True}, populate_existing=True)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    if is_terminal_run(run.state):
        raise Conflict(f"run {run_id} already finished ({run.state})")
    from autopack.db.models import utcnow

    transition(session, run, RunState.CANCELLED, finished_at=utcnow(), failure_reason="cancelled by request")
    emit(session, run.id, "run.cancelled")
    return run


def _attempt_view(a: Attempt) -> dict[str, Any]:
    gate = a.gate or {}
    tr = a.test_result or {}
    return {
        "number": a.number,
        "state": a.state,
        "model": a.model,
        "parent_commit": a.parent_commit,
        "commit": a.candidate_commit,
        "decision": a.decision,
        "failure": a.failure,
        "failure_class": a.failure_class,
        "classification": a.classification,
        "doctor": a.doctor,
        "routing": a.routing,
        "submission": {"received_at": a.submission.get("received_at"), "by": a.submission.get("by")} if a.submission else None,
        "refusals": a.refusals or [],
        "edit_rounds": a.edit_rounds or [],
        "test_summary": tr.get("summary"),
        "gate": gate,
        "audit": a.audit,
        "tokens": a.tokens_used,
        "cost_usd": round(a.cost_usd, 6),
    }


def run_view(session: Session, run: Run) -> dict[str, Any]:
    tiers = []
    # Tiers, phases and attempts in three statements, not one per tier and per phase (a run of 200
    # phases took some 215 at every GET /runs/<id>).
    loaded = session.scalars(select(Tier).where(Tier.run_id == run.id).order_by(Tier.index)
                             .options(selectinload(Tier.phases).selectinload(Phase.attempts)))
    for tier in loaded:
        phases = []
        for ph in tier.phases:
            phases.append(
                {
                    "id": ph.key,
                    "state": ph.state,
                    "attempts": ph.attempts_used,
                    "max_attempts": ph.max_attempts,
                    "commit": ph.commit_sha,
                    "tokens": ph.tokens_used,
                    "cost_usd": round(ph.cost_usd, 6),
                    "category": ph.spec.get("category"),
                    "goal": ph.spec.get("goal"),
                    "replans": ph.replans,
                    "plan_history": ph.plan_history or [],
                    "builder": ph.spec.get("builder", "model"),
                    "feedback": ph.feedback,
                    "attempt_details": [_attempt_view(a) for a in ph.attempts],
                }
            )
        tiers.append({"id": tier.key, "name": tier.name, "state": tier.state, "phases": phases})
    return {
        "id": run.id,
        "project": run.project.name,
        "state": run.state,
        "failure_reason": run.failure_reason,
        "base_branch": run.base_branch,
        "base_commit": run.base_commit,
        "branch": run.branch,
        "head_commit": run.head_commit,
        "tokens": run.tokens_used,
        "token_cap": run.token_cap,
        "cost_usd": round(run.cost_usd, 6),
        "cost_cap_usd": run.cost_cap_usd,
        "tokens_reserved": run.tokens_reserved,
        "cost_reserved_usd": round(run.cost_reserved_usd, 6),
        "charged": charged_at_worst_case(session, run.id),
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "tiers": tiers,
    }


def charged_at_worst_case(session: Session, run_id: str) -> dict[str, Any]:
    """The calls counted in ``tokens``/``cost_usd`` at their worst case, not at a reported usage:
    their worker died or froze mid-call and never settled them (the reconciler charged them)."""
    calls, tokens, cost = session.execute(
        select(func.count(BudgetReservation.id), func.coalesce(func.sum(BudgetReservation.tokens), 0),
               func.coalesce(func.sum(BudgetReservation.cost), 0.0))
        .where(BudgetReservation.run_id == run_id, BudgetReservation.state == "charged")
    ).one()
    return {"calls": int(calls), "tokens": int(tokens), "cost_usd": round(float(cost), 6)}


def calls_in_flight(session: Session, run_id: str) -> int:
    """The run's model calls reserved and not yet settled (or charged): its spend is not final."""
    return int(session.scalar(select(func.count(BudgetReservation.id))
                              .where(BudgetReservation.run_id == run_id, BudgetReservation.state == "open")) or 0)


def list_runs(session: Session, *, limit: int, state: str | None = None, project: str | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` runs (newest first), of ``state`` and of ``project`` when given, summarised.
    An unknown state is refused with :class:`PlanError` (field ``state``)."""
    q = select(Run).order_by(Run.created_at.desc()).limit(limit)
    if state is not None:
        if state not in RunState.__members__:
            raise PlanError("state", f"unknown run state {state!r}")
        q = q.where(Run.state == state)
    if project is not None:
        q = q.join(Project).where(Project.name == project)
    return [run_summary(r) for r in session.scalars(q)]


def run_summary(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "project": run.project.name,
        "state": run.state,
        "branch": run.branch,
        "tokens": run.tokens_used,
        "cost_usd": round(run.cost_usd, 6),
        "created_at": run.created_at.isoformat(),
    }


def has_undispatched(session: Session, run_id: str, types: Collection[str]) -> bool:
    """Whether an event of the run of one of ``types`` still waits for its handlers."""
    return session.scalar(select(Event.id).where(Event.run_id == run_id, Event.dispatched == False,  # noqa: E712 (matches ix_events_undispatched)
                                                 Event.type.in_(list(types))).limit(1)) is not None


def list_events(session: Session, run_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
    get_run(session, run_id)
    rows = session.scalars(
        select(Event).where(Event.run_id == run_id, Event.seq > after).order_by(Event.seq).limit(limit)
    )
    return [
        {
            "seq": e.seq,
            "type": e.type,
            "phase": e.phase_key,
            "attempt_id": e.attempt_id,
            "payload": e.payload,
            "at": as_utc(e.created_at).isoformat(),
        }
        for e in rows
    ]
