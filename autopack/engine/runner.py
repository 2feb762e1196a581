"""Running a step row under a lease, giving up on a step that keeps killing its worker, and the
reconciler that re-enqueues lost steps and drives overdue runs to a terminal state."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update

from autopack.db.models import Attempt, Phase, Run, StepRow, as_utc
from autopack.db.problems import database_problem
from autopack.db.session import session_scope
from autopack.engine.faults import crash_point
from autopack.engine.leases import CURRENT_STEP, Claim, Heartbeat, StaleLease, StepContext, add_steps, claim, db_now, mark_done, now_utc
from autopack.engine.ledger import charge_orphans
from autopack.engine.services import Services
from autopack.logs import bind
from autopack.engine.steps import STEPS, _end_run, take_back_ref_move
from autopack.engine.store import StaleState, emit, transition
from autopack.states import PHASE_TERMINAL, PhaseState, RunState, TierState, is_terminal_run

log = logging.getLogger("autopack.runner")

# Steps whose argument is an attempt id; with ``build`` (a phase id), the steps with an integer argument.
ATTEMPT_STEPS = frozenset({"probe", "audit", "decide", "diagnose"})
INT_ARGS = ATTEMPT_STEPS | {"build"}


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def create_step(db_url: str, run_id: str, name: str, arg: Any) -> tuple[int, str]:
    with session_scope(db_url) as s:
        return add_steps(s, run_id, [(name, arg)])[0].id, name


def execute(services: Services, step_id: int, owner: str | None = None) -> list[tuple[int, str]]:
    """Claim ``step_id``, run its engine function under a heartbeated lease, and return the ids of
    the steps it created (to enqueue after this returns: they are already committed)."""
    return execute_step(services, step_id, owner)[0]


def execute_step(services: Services, step_id: int, owner: str | None = None) -> tuple[list[tuple[int, str]], str | None]:
    """:func:`execute`, also returning the run of the step when this worker claimed it (``None``
    when it did not: then it ran nothing and emitted nothing)."""
    settings = services.settings
    got = claim(services.db_url, step_id, owner or worker_id(), settings.lease_ttl_s)
    if got is None:
        return [], None  # done, or another worker holds a live lease
    try:
        if got.deliveries > settings.max_deliveries:
            return give_up(services, got), got.run_id
        return _run_claimed(services, got), got.run_id
    except StaleLease as exc:  # giving up lost the step to another worker: its result stands
        log.warning("step %s (%s %s): %s; this worker's result is discarded", step_id, got.name, got.arg, exc)
        return [], None
    except Exception as exc:
        # The task shell ends the run for an error no retry cures (:func:`fail_step_row`), but only
        # while this claim still holds the step: it needs the claim's fence to tell.
        setattr(exc, CLAIM_ATTR, (got.step_id, got.token))
        raise


CLAIM_ATTR = "autopack_claim"


def claim_of(exc: BaseException) -> tuple[int, int] | None:
    """The (step id, fence) of the claim under which ``exc`` was raised, if it was."""
    found = getattr(exc, CLAIM_ATTR, None)
    return found if isinstance(found, tuple) else None


def _run_claimed(services: Services, got: Claim) -> list[tuple[int, str]]:
    settings, step_id = services.settings, got.step_id
    ctx = StepContext(step_id, got.token, got.run_id)
    arg: Any = int(got.arg) if got.name in INT_ARGS else got.arg
    fields = {"run": got.run_id, "step": got.name, "step_id": step_id}
    fields["phase" if got.name == "build" else "attempt"] = got.arg if got.name in INT_ARGS else None
    try:
        with bind(**fields), Heartbeat(services.db_url, step_id, got.token, settings.lease_ttl_s):
            log.info("step %s(%s) claimed with fence %s (delivery %s)", got.name, got.arg, got.token, got.deliveries)
            token = CURRENT_STEP.set((step_id, got.token))
            try:
                STEPS[got.name](services, arg, ctx)
            finally:
                CURRENT_STEP.reset(token)
            if not ctx.finished:
                with session_scope(services.db_url) as s:
                    ctx.finish(s, [], outcome="noop")
    except StaleLease as exc:
        log.warning("step %s (%s %s): %s; this worker's result is discarded", step_id, got.name, got.arg, exc)
        return []
    except StaleState as exc:
        # A compare-and-set lost to another writer. If that was the step's new holder (this worker
        # was paused past its lease), this worker's result is discarded as for a stale lease.
        try:
            with session_scope(services.db_url) as s:
                ctx.guard(s)
        except StaleLease:
            log.warning("step %s (%s %s): %s, and the step was taken over; this worker's result is discarded",
                        step_id, got.name, got.arg, exc)
            return []
        raise
    crash_point("after_db_commit")
    return ctx.new_steps


def give_up(services: Services, got: Claim) -> list[tuple[int, str]]:
    """A step delivered more than ``max_deliveries`` times (its worker keeps dying): fail what it
    was doing so the run ends instead of looping."""
    ctx = StepContext(got.step_id, got.token, got.run_id)
    moved: tuple[Any, ...] | None = None
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        row = s.get(StepRow, got.step_id)
        if row is not None and row.outcome == TIME_LIMIT_NOTE:
            reason = f"step {got.name} did not finish in {got.deliveries - 1} deliveries: it ran over its time limit"
        else:
            reason = f"step {got.name} lost its worker {got.deliveries - 1} times"
        run = s.get(Run, got.run_id)
        if got.name == "decide" and run is not None:
            # A decide that kept dying between its branch move and its record: the branch may hold
            # a candidate the run never recorded, to be moved back once the phase is failed.
            a = s.get(Attempt, int(got.arg))
            if a is not None and a.decision is None and a.candidate_commit:
                moved = (Path(run.project.repo_path), run.branch, run.head_commit, a.candidate_commit)
        if run is not None and not is_terminal_run(run.state):
            phase = _phase_of(s, got)
            if phase is not None and phase.state not in PHASE_TERMINAL and run.state == RunState.RUNNING:
                if phase.current_attempt_id:
                    a = s.get(Attempt, phase.current_attempt_id)
                    if a is not None and a.decision is None:
                        a.state, a.failure_class, a.failure, a.decision = "FAILED", "worker_lost", reason, "fail"
                transition(s, phase, PhaseState.FAILED, feedback=reason)
                emit(s, run.id, "phase.failed", phase_key=phase.key, reason=reason)
                if phase.tier.state == TierState.RUNNING:
                    transition(s, phase.tier, TierState.BLOCKED)
                _end_run(s, run, RunState.DONE_FAILED_TIER_BLOCKED, f"phase {phase.key} failed: {reason}")
            else:
                _end_run(s, run, RunState.DONE_FAILED_INFRASTRUCTURE, reason)
        mark_done(s, got.step_id, got.token, "given_up")
    if moved is not None:
        take_back_ref_move(*moved)
    return []


# What an open step's ``outcome`` says when a delivery of it was stopped at its queue's time limit:
# a step given up after ``max_deliveries`` then says so, not that it lost its worker.
TIME_LIMIT_NOTE = "time_limit"


def note_time_limit(services: Services, step_id: int, exc: BaseException) -> None:
    """Record on the open step that a delivery ran over its time limit (under the claim the error
    was raised in, when it carries one: a hard limit's error, raised in the worker's main process,
    carries none)."""
    claimed = claim_of(exc)
    cond = [StepRow.id == step_id, StepRow.done_at.is_(None)]
    if claimed is not None and claimed[0] == step_id:
        cond.append(StepRow.fence == claimed[1])
    with session_scope(services.db_url) as s:
        s.execute(update(StepRow).where(*cond).values(outcome=TIME_LIMIT_NOTE).execution_options(synchronize_session=False))


def _phase_of(s: Any, got: Claim) -> Phase | None:
    if got.name == "build":
        return s.get(Phase, int(got.arg))
    if got.name in ATTEMPT_STEPS:
        a = s.get(Attempt, int(got.arg))
        return a.phase if a is not None else None
    return None


def is_infrastructure_error(exc: BaseException) -> bool:
    """The database or the broker went away, or the database's schema is behind this code (a deploy
    whose migration has not run yet): the step's lease runs out and the reconciler hands it to
    another delivery; ending the run for it would turn a restart into a failed build.

    Any other database error is the step's own, SQLite's syntax errors included (SQLite raises
    ``OperationalError`` for those too): retrying it would only use up the deliveries."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, DBAPIError | PoolTimeout):
        return database_problem(exc) is not None
    return isinstance(exc, KombuOperationalError | RedisConnectionError | RedisTimeoutError | ConnectionError)


def fail_step_row(services: Services, step_id: int, exc: BaseException) -> str | None:
    """A step raised an error no retry cures: end its run with the reason instead of stranding it.
    Returns the step's run (``None`` for an unknown step, or one this worker no longer holds), whose
    events the caller dispatches.

    Only the step's holder does this. An error raised under a claim (:func:`claim_of`) counts only
    while that claim's fence is still the step's: a worker paused past its lease that fails when it
    comes back leaves the step, and the run, to the worker that took them over. An error raised
    before any claim counts only while no live lease is on the step."""
    claimed = claim_of(exc)
    with session_scope(services.db_url) as s:
        row = s.get(StepRow, step_id, with_for_update={"key_share": True})
        if row is None:
            return None
        if claimed is not None and claimed[0] == step_id:
            if row.fence != claimed[1] or row.done_at is not None:
                log.warning("step %s failed (%s: %s) after another worker took it over; its holder decides",
                            step_id, type(exc).__name__, exc)
                return None
        elif row.done_at is None and row.lease_expires_at is not None and as_utc(row.lease_expires_at) > db_now(s):
            log.warning("step %s failed (%s: %s) outside its live lease; its holder decides", step_id, type(exc).__name__, exc)
            return None
        run = s.get(Run, row.run_id)
        if run is not None and not is_terminal_run(run.state):
            _end_run(s, run, RunState.DONE_FAILED_INFRASTRUCTURE, f"step {row.name}({row.arg}) failed: {type(exc).__name__}: {exc}"[:4000])
        if row.done_at is None:
            row.done_at, row.outcome, row.lease_expires_at = now_utc(), "error", None
        return row.run_id


@dataclass
class ReconcileReport:
    requeued: list[tuple[int, str]] = field(default_factory=list)
    undispatched_runs: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    closed_steps: int = 0
    charged_reservations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requeued": self.requeued, "timed_out": self.timed_out, "closed_steps": self.closed_steps,
                "charged_reservations": self.charged_reservations, "undispatched_runs": self.undispatched_runs}


def reconcile(services: Services, max_runtime_s: float | None = None) -> ReconcileReport:
    """Find steps whose lease expired or that no worker picked up in time and hand them back for
    re-enqueueing; end runs past their maximum runtime; close the open steps of finished runs."""
    settings = services.settings
    report = ReconcileReport()
    with session_scope(services.db_url) as s:
        now = db_now(s)  # the clock the leases were set by (the database server's on PostgreSQL)
        # Runs past their maximum runtime end now. Each in a savepoint: one run that cannot be
        # ended must not hold up the rest of the pass (every other run's lost steps).
        for run in s.scalars(select(Run).where(Run.state.in_([RunState.QUEUED, RunState.PLANNING, RunState.RUNNING]))):
            try:
                with s.begin_nested():
                    limit = max_runtime_s if max_runtime_s is not None else float(run.strategy.get("run", {}).get("max_runtime_s", 6 * 3600))
                    created = as_utc(run.created_at)
                    if now - created > timedelta(seconds=limit):
                        _end_run(s, run, RunState.DONE_FAILED_TIMEOUT, f"run exceeded its maximum runtime of {limit:.0f}s")
                        report.timed_out.append(run.id)
            except Exception:  # noqa: BLE001 - logged; the next pass tries again
                log.exception("reconcile could not end overdue run %s", run.id)
        # Open steps of finished runs will never run: close them.
        finished = select(Run.id).where(Run.state.notin_([RunState.QUEUED, RunState.PLANNING, RunState.RUNNING]))
        res = s.execute(
            update(StepRow)
            .where(StepRow.done_at.is_(None), StepRow.run_id.in_(finished))
            .values(done_at=now, outcome="run_finished", lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        report.closed_steps = res.rowcount  # type: ignore[attr-defined]
        grace = now - timedelta(seconds=settings.pickup_grace_s)
        due = s.scalars(
            select(StepRow).where(
                StepRow.done_at.is_(None),
                or_(
                    # The worker died or was cut off: handed back once when its lease runs out, then
                    # again only if no worker took that message within the pickup grace.
                    and_(StepRow.lease_expires_at < now,
                         or_(StepRow.enqueued_at < StepRow.lease_expires_at, StepRow.enqueued_at < grace)),
                    and_(StepRow.lease_expires_at.is_(None), StepRow.enqueued_at < grace),  # never picked up
                ),
            ).order_by(StepRow.id)
        ).all()
        for row in due:
            row.enqueued_at = now
            report.requeued.append((row.id, row.name))
        # Reservations whose step can no longer settle them (the worker died or froze mid-call): charged
        # at worst, each in a transaction of its own (this session's work so far is committed first).
        report.charged_reservations = charge_orphans(s, now)
    from autopack.events.dispatch import runs_with_undispatched

    report.undispatched_runs = runs_with_undispatched(services.db_url, older_than_s=min(5.0, settings.pickup_grace_s))
    return report
