"""Budget reservation: the worst case of a model call is reserved with conditional updates (phase,
run, and the project's day) before the call, and settled with the provider's reported usage after.
``spent + reserved <= cap`` always, at every level, also under concurrency.

Each reservation is also a row (``reservations``) naming the step and fence that made it. When that
step can no longer settle it (the worker died or was paused mid-call: its lease expired, another
worker re-claimed the step, the step or the run ended), ``charge_orphans`` (run by the reconciler)
*charges* it: its worst case moves from reserved to spent, on the run, the project's day and the
phase. Nobody can tell whether the provider billed a call whose worker vanished, so the budget
counts it as billed at worst; freeing the room instead would let a paused worker that comes back
spend past the cap. A settlement that arrives after the charge (the paused worker resumed)
replaces the worst case by what was reported, once. A call whose answer was lost (a read timeout,
a dropped connection, the step interrupted mid-call) is charged the same way by its own step
(``charge``): the provider may have billed it.

A reservation is refused when its step no longer holds the lease (``StaleLease``: a paused worker
that came back spends nothing more) or its run is over (a cancelled run's step spends nothing
more); the phase's caps count the calls of the phase still in flight.

Locks are taken in one order everywhere: the reservation, the phase, the run, the project's day
(a reserve first checks its step's row). Each orphan is charged in a transaction of its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from autopack.db.models import BudgetReservation, Phase, ProjectSpend, Run, StepRow, as_utc
from autopack.engine.leases import StaleLease, db_now, lease_clock
from autopack.errors import BudgetExceeded
from autopack.llm._common import bound_tokens
from autopack.states import RUN_TERMINAL

log = logging.getLogger(__name__)

# How a refusal by the phase's own caps starts (budget calibration counts the phases stopped there).
PHASE_TOKEN_CAP = "phase token cap"
PHASE_COST_CAP = "phase cost cap"


# The prompt estimate, a call's input worst case, lives with the adapters (which book it as usage
# when a server reports none); the budgets use the same bound.
estimate_tokens = bound_tokens


def utc_day(when: datetime) -> str:
    """The UTC date of ``when``: the key of a project's daily spend."""
    return as_utc(when).astimezone(timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Reservation:
    id: int
    run_id: str
    phase_id: int | None
    project_id: int
    day: str
    tokens: int
    cost: float


def _ensure_day(session: Session, project_id: int, day: str) -> None:
    dialect = session.get_bind().dialect.name
    mod = postgresql if dialect == "postgresql" else sqlite
    session.execute(mod.insert(ProjectSpend).values(project_id=project_id, day=day, tokens_used=0, tokens_reserved=0,
                                                    cost_usd=0.0, cost_reserved_usd=0.0).on_conflict_do_nothing())


def reserve(session: Session, run_id: str, phase_id: int | None, tokens: int, cost: float, phase_token_cap: int | None,
            *, daily_token_cap: int | None = None, daily_cost_cap: float | None = None,
            step: tuple[int, int] | None = None, after_end: bool = False) -> Reservation:
    """Reserve ``tokens`` and ``cost`` on the run (and the project's day when caps are given) after
    checking the phase's caps, or raise ``BudgetExceeded`` and reserve nothing (the caller's
    transaction rolls back). ``step`` is the (step id, fence) making the call, so the reconciler can
    release what a dead worker left; a step that no longer holds its lease raises ``StaleLease``, as
    does a call for a run that is over, unless ``after_end`` (the postmortem's narrative)."""
    if step is not None:
        # FOR SHARE: a claim of the step (which moves its fence) waits until this reservation is
        # committed, and is then counted below by the new holder's calls.
        fence = session.scalar(select(StepRow.fence).where(StepRow.id == step[0], StepRow.done_at.is_(None)).with_for_update(read=True))
        if fence != step[1]:
            raise StaleLease(f"step {step[0]}: fence {step[1]} is stale (now {fence}): no model call for it")
    if phase_id is not None:
        # The phase's caps (its category's token_cap and cost_cap_usd) bound every call made for it:
        # Builder, auditors, judge, Doctor, planner, counting the calls of the phase still in flight
        # (a paused worker's, say). The phase's row is locked so two reservations are counted in turn.
        ph = session.scalar(select(Phase).where(Phase.id == phase_id).with_for_update())
        if ph is not None:
            token_cap = phase_token_cap if phase_token_cap is not None else (ph.budget or {}).get("token_cap")
            cost_cap = (ph.budget or {}).get("cost_cap_usd")
            open_tokens, open_cost = session.execute(
                select(func.coalesce(func.sum(BudgetReservation.tokens), 0), func.coalesce(func.sum(BudgetReservation.cost), 0.0))
                .where(BudgetReservation.phase_id == phase_id, BudgetReservation.state == "open")
            ).one()
            in_flight = f", {open_tokens} in calls in flight" if open_tokens else ""
            if token_cap is not None and ph.tokens_used + int(open_tokens) + tokens > int(token_cap):
                raise BudgetExceeded("tokens", f"{PHASE_TOKEN_CAP} {token_cap} reached ({ph.tokens_used} used{in_flight}, "
                                               f"call needs up to {tokens})")
            if cost_cap is not None and ph.cost_usd + float(open_cost) + cost > float(cost_cap) + 1e-12:
                raise BudgetExceeded("cost", f"{PHASE_COST_CAP} ${float(cost_cap):.2f} reached (${ph.cost_usd:.4f} spent"
                                             f"{f', ${float(open_cost):.4f} in calls in flight' if open_cost else ''}, "
                                             f"call needs up to ${cost:.4f})")
    # The day is the database's (on PostgreSQL, read in the same statement): workers whose clocks
    # disagree near midnight must not charge a call to two different days of the project's cap.
    clock = lease_clock(session)
    on_server = not isinstance(clock, datetime)
    live = [] if after_end else [Run.state.notin_([s.value for s in RUN_TERMINAL])]
    res = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            *live,
            Run.tokens_used + Run.tokens_reserved + tokens <= Run.token_cap,
            Run.cost_usd + Run.cost_reserved_usd + cost <= Run.cost_cap_usd,
        )
        .values(tokens_reserved=Run.tokens_reserved + tokens, cost_reserved_usd=Run.cost_reserved_usd + cost)
        .returning(Run.project_id, *([clock] if on_server else []))
        .execution_options(synchronize_session=False)
    ).first()
    if res is None:
        run = session.get(Run, run_id)
        assert run is not None
        session.refresh(run)
        if not after_end and run.state in {s.value for s in RUN_TERMINAL}:
            raise StaleLease(f"run {run_id} is over ({run.state}): no model call for it")
        if run.tokens_used + run.tokens_reserved + tokens > run.token_cap:
            raise BudgetExceeded("tokens", f"run token cap {run.token_cap} reached ({run.tokens_used} used, call needs up to {tokens})")
        raise BudgetExceeded("cost", f"run cost cap ${run.cost_cap_usd:.2f} reached (${run.cost_usd:.4f} spent, call needs up to ${cost:.4f})")
    project_id = int(res[0])
    day = utc_day(res[1] if on_server else clock)
    if daily_token_cap is not None and daily_cost_cap is not None:
        _ensure_day(session, project_id, day)
        ok = session.execute(
            update(ProjectSpend)
            .where(
                ProjectSpend.project_id == project_id, ProjectSpend.day == day,
                ProjectSpend.tokens_used + ProjectSpend.tokens_reserved + tokens <= daily_token_cap,
                ProjectSpend.cost_usd + ProjectSpend.cost_reserved_usd + cost <= daily_cost_cap,
            )
            .values(tokens_reserved=ProjectSpend.tokens_reserved + tokens, cost_reserved_usd=ProjectSpend.cost_reserved_usd + cost)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if ok != 1:
            spend = session.get(ProjectSpend, (project_id, day))
            assert spend is not None
            session.refresh(spend)
            kind = "tokens" if spend.tokens_used + spend.tokens_reserved + tokens > daily_token_cap else "cost"
            raise BudgetExceeded(kind, f"project daily {kind} cap reached for {day} "
                                       f"({spend.tokens_used} tokens / ${spend.cost_usd:.4f} spent today)")
    row = BudgetReservation(run_id=run_id, phase_id=phase_id, project_id=project_id, day=day, tokens=tokens, cost=cost,
                            step_id=step[0] if step else None, fence=step[1] if step else None)
    session.add(row)
    session.flush()
    return Reservation(row.id, run_id, phase_id, project_id, day, tokens, cost)


def _close(session: Session, reservation_id: int, state: str, was: str = "open") -> bool:
    """Compare-and-set the reservation from ``was`` to ``state``; whether this call moved it."""
    return bool(session.execute(
        update(BudgetReservation).where(BudgetReservation.id == reservation_id, BudgetReservation.state == was)
        .values(state=state, closed_at=datetime.now(timezone.utc)).execution_options(synchronize_session=False)
    ).rowcount)  # type: ignore[attr-defined]


def _move(session: Session, run_id: str, project_id: int, day: str, release_tokens: int, release_cost: float,
          used_tokens: int, used_cost: float) -> None:
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(
            tokens_reserved=Run.tokens_reserved - release_tokens,
            cost_reserved_usd=Run.cost_reserved_usd - release_cost,
            tokens_used=Run.tokens_used + used_tokens,
            cost_usd=Run.cost_usd + used_cost,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(ProjectSpend)
        .where(ProjectSpend.project_id == project_id, ProjectSpend.day == day)
        .values(
            tokens_reserved=ProjectSpend.tokens_reserved - release_tokens,
            cost_reserved_usd=ProjectSpend.cost_reserved_usd - release_cost,
            tokens_used=ProjectSpend.tokens_used + used_tokens,
            cost_usd=ProjectSpend.cost_usd + used_cost,
        )
        .execution_options(synchronize_session=False)
    )


def _add_phase(session: Session, phase_id: int | None, tokens: int, cost: float) -> None:
    if phase_id is not None:
        session.execute(
            update(Phase)
            .where(Phase.id == phase_id)
            .values(tokens_used=Phase.tokens_used + tokens, cost_usd=Phase.cost_usd + cost)
            .execution_options(synchronize_session=False)
        )


def settle(session: Session, r: Reservation, used_tokens: int, used_cost: float) -> None:
    """Replace a reservation by what the provider reported (zero when the provider refused the
    call). If the reconciler already charged it at its worst case, the charge is corrected to the
    reported usage. A report above the worst case (the prompt estimate was low) is booked as
    reported: the caps then stop the next call."""
    release_tokens, release_cost, tokens, cost = 0, 0.0, used_tokens, used_cost
    if _close(session, r.id, "settled"):  # still reserved: the room is given back
        release_tokens, release_cost = r.tokens, r.cost
    elif _close(session, r.id, "settled", was="charged"):  # counted at its worst case: corrected
        tokens, cost = used_tokens - r.tokens, used_cost - r.cost
    # (else: released by an older version, which freed the room: the spend is counted)
    if used_tokens > r.tokens or used_cost > r.cost + 1e-12:
        log.warning("model call of run %s used %d tokens ($%.4f), over its reserved worst case of %d ($%.4f)",
                    r.run_id, used_tokens, used_cost, r.tokens, r.cost)
    _add_phase(session, r.phase_id, tokens, cost)
    _move(session, r.run_id, r.project_id, r.day, release_tokens, release_cost, tokens, cost)


def charge(session: Session, r: Reservation) -> bool:
    """Count an open reservation as spent at its worst case: its call's answer was lost (a read
    timeout, a dropped connection, the step stopped mid-call), so the provider may have billed it
    all. Whether this call charged it (False: it was settled or charged already)."""
    if not _close(session, r.id, "charged"):
        return False
    _add_phase(session, r.phase_id, r.tokens, r.cost)
    _move(session, r.run_id, r.project_id, r.day, r.tokens, r.cost, r.tokens, r.cost)
    return True


def charge_orphans(session: Session, now: datetime | None = None) -> int:
    """Charge the open reservations no step can settle any more at their worst case: their step is
    done, its lease expired, another claim replaced the one that reserved, or the run ended.
    Returns how many. ``now`` defaults to the clock the leases are judged by.

    Each is charged and committed on its own (the session is committed, also before the first):
    charging the orphans of several runs of a project in one transaction held one run and the
    project's day while it waited for the next run, whose worker held that run and waited for the
    day, and PostgreSQL ended one of them as a deadlock."""
    now = now or db_now(session)
    terminal = [s.value for s in RUN_TERMINAL]
    rows = session.execute(
        select(BudgetReservation, StepRow.fence, StepRow.done_at, StepRow.lease_expires_at, Run.state)
        .join(Run, Run.id == BudgetReservation.run_id)
        .outerjoin(StepRow, StepRow.id == BudgetReservation.step_id)
        .where(BudgetReservation.state == "open")
    ).all()
    orphans = []
    for r, fence, done_at, expires, run_state in rows:
        if r.step_id is None:
            orphan = run_state in terminal
        else:
            expired = expires is not None and as_utc(expires) < now
            orphan = run_state in terminal or done_at is not None or fence != r.fence or expired
        if orphan:
            orphans.append(Reservation(r.id, r.run_id, r.phase_id, r.project_id, r.day, r.tokens, r.cost))
    charged = 0
    for r in orphans:
        session.commit()
        charged += charge(session, r)
    session.commit()
    return charged
