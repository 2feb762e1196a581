"""A project's known-flaky tests in the database: folded in when a run ends (the dispatcher's
``flakiness`` handler, once per run), aged by beat's maintenance task (and ``autopack flaky age``),
set by hand by an operator (``autopack flaky quarantine|clear``, ``PUT /projects/<name>/flaky-tests/<test>``),
read by the probe step (which tests are quarantined) and listed by the API and the CLI.

Every writer first locks the project's row, so two runs of one project ending together, or a run
ending while the maintenance task ages the records, fold one after the other (on SQLite the
transaction's write lock does the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from autopack import flakiness as fl
from autopack.db.models import Attempt, FlakyTest, Project, Run, as_utc
from autopack.db.session import session_scope
from autopack.engine.leases import db_now
from autopack.errors import NotFound


def _record(row: FlakyTest) -> fl.FlakyRecord:
    return fl.FlakyRecord(
        test_id=row.test_id, state=row.state, flaky_count=row.flaky_count, runs=tuple(row.runs or ()),
        passes_since_flaky=row.passes_since_flaky, first_seen_at=as_utc(row.first_seen_at),
        last_flaky_at=as_utc(row.last_flaky_at), state_changed_at=as_utc(row.state_changed_at), state_reason=row.state_reason,
    )


def _store(row: FlakyTest, rec: fl.FlakyRecord) -> None:
    row.state, row.state_reason, row.flaky_count, row.runs = rec.state, rec.state_reason, rec.flaky_count, list(rec.runs)
    row.passes_since_flaky = rec.passes_since_flaky
    row.first_seen_at, row.last_flaky_at, row.state_changed_at = rec.first_seen_at, rec.last_flaky_at, rec.state_changed_at  # type: ignore[assignment]


def _lock_project(session: Session, project_id: int) -> None:
    # FOR NO KEY UPDATE: it serializes the writers of the records, and unlike FOR UPDATE it does not
    # make inserts that reference the project (runs, issues, spend) wait on their foreign-key check.
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update(key_share=True))


def record_run(session: Session, run: Run, cfg: fl.FlakinessConfig, now: datetime | None = None) -> list[tuple[str, str, str]]:
    """Fold what the gates of ``run`` saw into its project's records, in the caller's transaction;
    return the state changes as (test id, new state, reason). The flakes are dated when the run
    ended (not when this fold runs, which may be later if the events queue is backed up)."""
    _lock_project(session, run.project_id)
    now = now or as_utc(run.finished_at) or db_now(session)
    gates = session.execute(
        select(Attempt.test_result, Attempt.gate).where(Attempt.run_id == run.id, Attempt.gate.is_not(None)).order_by(Attempt.id)
    ).all()
    attempts = [fl.attempt_tests(r.test_result, r.gate) for r in gates]
    if not attempts:
        return []
    rows = {r.test_id: r for r in session.scalars(select(FlakyTest).where(FlakyTest.project_id == run.project_id))}
    fold = fl.fold_run({t: _record(r) for t, r in rows.items()}, run.id, attempts, now, cfg)
    for test_id, rec in fold.records.items():
        row = rows.get(test_id)
        if row is None:
            row = FlakyTest(project_id=run.project_id, test_id=test_id)
            session.add(row)
        _store(row, rec)
    return fold.changes


@dataclass
class AgeReport:
    cleared: list[str] = field(default_factory=list)  # "project: test id"
    forgotten: list[str] = field(default_factory=list)
    kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"cleared": self.cleared, "forgotten": self.forgotten, "kept": self.kept}


def age_records(db_url: str, cfg: fl.FlakinessConfig, now: datetime | None = None) -> AgeReport:
    """Clear the records that flaked no more for ``clear_after_days`` and forget those cleared for
    ``forget_after_days``: beat's maintenance task, one transaction per project."""
    report = AgeReport()
    with session_scope(db_url) as s:
        projects = list(s.execute(select(Project.id, Project.name).where(Project.id.in_(select(FlakyTest.project_id)))).all())
    for project_id, name in projects:
        with session_scope(db_url) as s:
            _lock_project(s, project_id)
            when = now or db_now(s)
            for row in s.scalars(select(FlakyTest).where(FlakyTest.project_id == project_id).order_by(FlakyTest.id)):
                rec = fl.age(_record(row), when, cfg)
                if rec is None:
                    s.execute(delete(FlakyTest).where(FlakyTest.id == row.id))
                    report.forgotten.append(f"{name}: {row.test_id}")
                    continue
                if rec.state != row.state:
                    report.cleared.append(f"{name}: {row.test_id}")
                    _store(row, rec)
                report.kept += 1
    return report


def set_record_by_hand(session: Session, project: Project, test_id: str, state: str, reason: str = "",
                       now: datetime | None = None) -> dict[str, Any]:
    """An operator quarantines or clears ``test_id`` in ``project`` (:func:`autopack.flakiness.set_by_hand`),
    in the caller's transaction; return the record as listed. No event: there is no run to tell.
    Raises ``NotFound`` to clear a test without a record, ``InvalidRequest`` for a bad state or reason."""
    _lock_project(session, project.id)
    now = now or db_now(session)
    row = session.scalar(select(FlakyTest).where(FlakyTest.project_id == project.id, FlakyTest.test_id == test_id))
    try:
        rec = fl.set_by_hand(_record(row) if row is not None else None, test_id, state, reason, now)
    except NotFound as exc:
        raise NotFound(f"{exc} in project {project.name!r}") from None
    if row is None:
        row = FlakyTest(project_id=project.id, test_id=test_id)
        session.add(row)
    _store(row, rec)
    session.flush()
    return flaky_view(row)


def quarantined_tests(session: Session, project_id: int) -> frozenset[str]:
    return frozenset(session.scalars(select(FlakyTest.test_id).where(FlakyTest.project_id == project_id, FlakyTest.state == fl.QUARANTINED)))


def flaky_view(row: FlakyTest) -> dict[str, Any]:
    return {
        "test": row.test_id, "state": row.state, "reason": row.state_reason, "flaky_count": row.flaky_count,
        "runs": list(row.runs or ()), "passes_since_flaky": row.passes_since_flaky,
        "first_seen_at": as_utc(row.first_seen_at).isoformat(), "last_flaky_at": as_utc(row.last_flaky_at).isoformat(),
        "state_changed_at": as_utc(row.state_changed_at).isoformat(),
    }


def project_flaky_tests(session: Session, project: Project, state: str | None = None) -> list[dict[str, Any]]:
    """The project's records, quarantined first, then suspected, then cleared; by test id within."""
    q = select(FlakyTest).where(FlakyTest.project_id == project.id)
    if state is not None:
        q = q.where(FlakyTest.state == state)
    order = {fl.QUARANTINED: 0, fl.SUSPECTED: 1, fl.CLEARED: 2}
    return [flaky_view(r) for r in sorted(session.scalars(q), key=lambda r: (order.get(r.state, 3), r.test_id))]
