"""Database helpers for the engine: compare-and-set transitions and the per-run event sequence."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from autopack.db.models import Event, Phase, Run, Tier
from autopack.engine.leases import record_clock
from autopack.errors import AutopackError
from autopack.states import check_transition


class StaleState(AutopackError):
    """The row changed under us (another worker, a cancel): this step does nothing."""


_ENTITY = {Run: "run", Tier: "tier", Phase: "phase"}


def transition(session: Session, obj: Run | Tier | Phase, target: str, **values: Any) -> None:
    """Move ``obj`` to ``target`` if legal, with a compare-and-set on (state, version) for runs and
    phases and on state for tiers. Raises ``IllegalTransition`` or ``StaleState``."""
    cls = type(obj)
    check_transition(_ENTITY[cls], obj.state, target)
    cond = [cls.id == obj.id, cls.state == obj.state]
    new_values: dict[str, Any] = {"state": target, **values}
    if hasattr(cls, "version"):
        cond.append(cls.version == obj.version)
        new_values["version"] = obj.version + 1
    result = session.execute(update(cls).where(*cond).values(**new_values).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleState(f"{_ENTITY[cls]} {obj.id} is no longer {obj.state}")
    session.refresh(obj)


def emit(
    session: Session,
    run_id: str,
    type_: str,
    *,
    phase_key: str | None = None,
    attempt_id: int | None = None,
    **payload: Any,
) -> Event:
    """Write an event in the caller's transaction with the run's next gap-free sequence number.

    Its ``created_at`` is on :func:`record_clock` (the database server's on PostgreSQL), which the
    reconciler judges an undispatched event's age by: an event written by a machine whose clock ran
    ahead was not re-dispatched until that machine's clock caught up."""
    seq = session.execute(
        update(Run).where(Run.id == run_id).values(event_seq=Run.event_seq + 1).returning(Run.event_seq)
    ).scalar_one()
    ev = Event(run_id=run_id, seq=seq, type=type_, phase_key=phase_key, attempt_id=attempt_id, payload=payload,
               created_at=record_clock(session))
    session.add(ev)
    session.flush()
    return ev
