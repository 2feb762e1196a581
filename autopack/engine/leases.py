"""Step rows, leases and fencing tokens.

``claim`` takes a step with a lease and a fencing token that increases on every claim; ``guard``
and ``StepContext.finish`` check the token inside the caller's transaction, so a worker that was
paused or partitioned past its lease, and whose step another worker took over, changes nothing.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from autopack.db.models import StepRow, as_utc
from autopack.db.session import session_scope
from autopack.errors import AutopackError

log = logging.getLogger("autopack.leases")

Step = tuple[str, Any]

# The (step id, fence) this thread is executing, for records that must name their step (budget
# reservations); set by ``runner.execute``.
CURRENT_STEP: ContextVar[tuple[int, int] | None] = ContextVar("autopack_current_step", default=None)


class StaleLease(AutopackError):
    """Another worker holds this step now (or it is done): the caller must stop without writing."""


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def lease_clock(session: Session) -> Any:
    """The clock leases are set and judged by: the database server's on PostgreSQL (``now()``, in
    SQL), so workers on several machines whose clocks disagree never see a live lease as expired;
    this process's on SQLite, which only one machine uses."""
    return func.now() if _on_postgres(session) else now_utc()


def _on_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def record_clock(session: Session) -> Any:
    """When something happens, on :func:`lease_clock`'s clock: ``clock_timestamp()`` on PostgreSQL
    (the moment of the statement; ``now()`` is the transaction's start, which a long transaction
    would date back), this process's clock on SQLite. For events and model calls, whose age is judged
    (re-dispatch after 5 s, outage cooldowns) on the database's clock."""
    return func.clock_timestamp() if _on_postgres(session) else now_utc()


def db_now(session: Session) -> datetime:
    """The current time on :func:`lease_clock` as a value (one query on PostgreSQL)."""
    clock = lease_clock(session)
    if isinstance(clock, datetime):
        return clock
    value = session.scalar(select(clock))
    return as_utc(value)


def add_steps(session: Session, run_id: str, steps: list[Step]) -> list[StepRow]:
    """Open step rows in the caller's transaction. Their ``enqueued_at`` is on :func:`lease_clock`,
    which the reconciler's pickup grace is judged by: a row written by a machine whose clock runs
    behind would otherwise look unpicked at once (sent again), one ahead would be left lost longer."""
    clock = lease_clock(session)
    rows = [StepRow(run_id=run_id, name=name, arg=str(arg), enqueued_at=clock) for name, arg in steps]
    session.add_all(rows)
    session.flush()
    return rows


@dataclass(frozen=True)
class Claim:
    step_id: int
    run_id: str
    name: str
    arg: str
    token: int
    deliveries: int


def claim(db_url: str, step_id: int, owner: str, ttl_s: float) -> Claim | None:
    """Claim ``step_id`` unless it is done or another live lease holds it."""
    with session_scope(db_url) as s:
        now = lease_clock(s)
        res = s.execute(
            update(StepRow)
            .where(
                StepRow.id == step_id,
                StepRow.done_at.is_(None),
                or_(StepRow.lease_expires_at.is_(None), StepRow.lease_expires_at < now),
            )
            .values(
                fence=StepRow.fence + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=ttl_s),
                deliveries=StepRow.deliveries + 1,
            )
            .returning(StepRow.run_id, StepRow.name, StepRow.arg, StepRow.fence, StepRow.deliveries)
            .execution_options(synchronize_session=False)
        ).first()
    if res is None:
        return None
    return Claim(step_id, res.run_id, res.name, res.arg, res.fence, res.deliveries)


def guard(session: Session, step_id: int, token: int) -> None:
    """Raise ``StaleLease`` unless ``token`` is still the step's fence and the step is open.

    The step's row is share-locked until the caller's transaction ends (PostgreSQL; SQLite's write
    transactions are serial already): a claim by another worker waits for this transaction and
    then sees its writes, so a guarded transaction cannot commit after its step was taken over."""
    fence = session.scalar(select(StepRow.fence).where(StepRow.id == step_id, StepRow.done_at.is_(None))
                           .with_for_update(read=True))
    if fence != token:
        raise StaleLease(f"step {step_id}: fence {token} is stale (now {fence})")


def renew(db_url: str, step_id: int, token: int, ttl_s: float) -> bool:
    with session_scope(db_url) as s:
        res = s.execute(
            update(StepRow)
            .where(StepRow.id == step_id, StepRow.fence == token, StepRow.done_at.is_(None))
            .values(lease_expires_at=lease_clock(s) + timedelta(seconds=ttl_s))
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1  # type: ignore[attr-defined]


def mark_done(session: Session, step_id: int, token: int, outcome: str) -> None:
    res = session.execute(
        update(StepRow)
        .where(StepRow.id == step_id, StepRow.fence == token, StepRow.done_at.is_(None))
        .values(done_at=now_utc(), outcome=outcome, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleLease(f"step {step_id}: fence {token} is stale")


@dataclass
class StepContext:
    """What a step function gets to fence its writes and hand over the next steps."""

    step_id: int
    token: int
    run_id: str
    finished: bool = False
    new_steps: list[tuple[int, str]] = field(default_factory=list)  # (step id, step name)

    def guard(self, session: Session) -> None:
        guard(session, self.step_id, self.token)

    def finish(self, session: Session, steps: list[Step], outcome: str = "ok") -> list[Step]:
        """In the caller's transaction: check the fence, mark this step done, add the next steps."""
        mark_done(session, self.step_id, self.token, outcome)
        rows = add_steps(session, self.run_id, steps)
        self.new_steps += [(r.id, r.name) for r in rows]
        self.finished = True
        return steps


class Heartbeat:
    """Renews a lease every third of its TTL while the step runs (a thread)."""

    def __init__(self, db_url: str, step_id: int, token: int, ttl_s: float) -> None:
        self.args = (db_url, step_id, token, ttl_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{step_id}", daemon=True)

    def _loop(self) -> None:
        db_url, step_id, token, ttl_s = self.args
        while not self._stop.wait(ttl_s / 3):
            try:
                if not renew(db_url, step_id, token, ttl_s):
                    return
            except Exception:  # noqa: BLE001 - a missed beat only risks a takeover, which is safe
                log.warning("heartbeat of step %s failed", step_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
