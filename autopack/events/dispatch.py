"""The event dispatcher: fans each undispatched event out to its subscribed handlers, each exactly
once in effect (the handler's writes and its (event, handler) delivery row commit together), then
mirrors it to the Redis Stream (prod) and marks it dispatched. Killed at any point, it can simply
run again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autopack import postmortem
from autopack.db.locks import named_lock
from autopack.db.models import Event, EventDelivery, Postmortem, Run
from autopack.db.session import session_scope
from autopack.engine.faults import crash_point
from autopack.engine.leases import lease_clock
from autopack.engine.runs import calls_in_flight
from autopack.engine.store import emit
from autopack.errors import RetryableError

log = logging.getLogger("autopack.events")

HandlerFn = Callable[[Session, Any, dict[str, Any]], None]

# How long a dispatcher waits for another one preparing the same (event, handler): longer than a
# model call normally takes, so the waiter then finds the delivery made and skips it.
PREPARE_LOCK_WAIT_S = 60.0


@dataclass(frozen=True)
class Handler:
    name: str
    types: frozenset[str]
    fn: HandlerFn
    # Work done before the handler's transaction (a model call must not hold the database);
    # its result reaches ``fn`` as ``event["prepared"]``.
    prepare: Callable[[Any, dict[str, Any]], Any] | None = None


class CallsInFlight(RetryableError):
    """The run ended with model calls still answering: its spend is not final yet."""


def _write_postmortem(session: Session, services: Any, event: dict[str, Any]) -> None:
    """The postmortem, written once, after the run's last call settled: a run cancelled while a
    step's model call was answering would otherwise keep that call's cost out of it for good (the
    dispatcher tries again with backoff, then the reconciler; a dead worker's call is charged by the
    reconciler)."""
    run = session.get(Run, event["run_id"])
    if run is None or session.get(Postmortem, run.id) is not None:
        return
    if in_flight := calls_in_flight(session, run.id):
        raise CallsInFlight(f"run {run.id}: {in_flight} model call(s) still answering; its postmortem waits")
    facts = postmortem.collect_facts(session, run)
    session.add(Postmortem(run_id=run.id, facts=facts, markdown=postmortem.render(facts, event.get("prepared"))))


def _narrative(services: Any, event: dict[str, Any]) -> str | None:
    """A short narrative from the configured model, or None (the facts stand alone)."""
    import json

    config = getattr(services, "config", None)
    model = config.strategy.learning.narrative_model if config is not None else None
    if not model:
        return None
    from autopack.engine.steps import CallScope, make_call
    from autopack.errors import BudgetExceeded, ProviderError
    from autopack.llm.base import Message

    with session_scope(services.db_url) as s:
        run = s.get(Run, event["run_id"])
        if run is None or s.get(Postmortem, run.id) is not None or calls_in_flight(s, run.id):
            return None  # (calls in flight: the postmortem is not written now, nor paid for)
        facts = postmortem.collect_facts(s, run)
    call = make_call(services, CallScope(run.id, None, None, "postmortem", model, None, after_end=True))
    user = services.prompts.render("postmortem", run_id=run.id, facts=json.dumps(facts, indent=1, default=str)[:12000])
    try:
        return " ".join(call(services.prompts.render("postmortem_system"), [Message(role="user", content=user)], 400).text.split()) or None
    except (BudgetExceeded, ProviderError) as exc:
        log.warning("narrative model failed (%s); the postmortem carries the facts alone", exc)
        return None


def _refresh_rules(session: Session, services: Any, event: dict[str, Any]) -> None:
    """On run end: measure the effect of the project's rules and retire those that stopped paying.
    (Hints and promotions are recorded by the engine when a phase completes, before the next phase
    is built, so a prompt never depends on how fast this dispatcher ran.)"""
    from autopack.engine.learning import retire_rules
    from autopack.strategy import LearningConfig

    run = session.get(Run, event["run_id"])
    if run is None:
        return
    config = getattr(services, "config", None)
    cfg = config.strategy.learning if config is not None else LearningConfig()
    for rule_id, reason in retire_rules(session, cfg, project_id=run.project_id):
        emit(session, run.id, "rule.retired", rule_id=rule_id, reason=reason)


def _record_flakiness(session: Session, services: Any, event: dict[str, Any]) -> None:
    """On run end: fold what the run's gates saw into its project's known-flaky tests; a test
    quarantined, cleared or suspected again is told by a ``flaky.<state>`` event of the run."""
    from autopack.engine.flakiness import record_run
    from autopack.flakiness import FlakinessConfig

    run = session.get(Run, event["run_id"])
    if run is None:
        return
    config = getattr(services, "config", None)
    cfg = config.strategy.flakiness if config is not None else FlakinessConfig()
    for test_id, state, reason in record_run(session, run, cfg):
        emit(session, run.id, f"flaky.{state}", test=test_id, reason=reason)


HANDLERS: list[Handler] = [
    Handler("rules", frozenset({"run.finished"}), _refresh_rules),
    Handler("flakiness", frozenset({"run.finished", "run.cancelled"}), _record_flakiness),
    Handler("postmortem", frozenset({"run.finished", "run.cancelled"}), _write_postmortem, _narrative),
]


def register(handler: Handler) -> None:
    """Add (or replace) a handler. Every worker process must register the same handlers, at import:
    a step's worker marks an event no handler of its own takes as dispatched (``defer_handled``)."""
    HANDLERS[:] = [h for h in HANDLERS if h.name != handler.name] + [handler]


def event_dict(ev: Event) -> dict[str, Any]:
    return {"id": ev.id, "run_id": ev.run_id, "seq": ev.seq, "type": ev.type, "phase_key": ev.phase_key,
            "attempt_id": ev.attempt_id, "payload": ev.payload}


@dataclass
class DispatchReport:
    events: int = 0
    deliveries: int = 0
    mirrored: int = 0
    skipped: list[str] = field(default_factory=list)
    # With ``defer_handled``: an event a handler subscribes to is left, with every event after it,
    # for a dispatcher on the events queue.
    deferred: bool = False
    # Another dispatcher held an event's handler (its preparation) for PREPARE_LOCK_WAIT_S: that
    # event and the rest of the batch are left undispatched, for a later dispatcher.
    busy: bool = False


def dispatch_pending(services: Any, run_id: str | None = None, *, handlers: list[Handler] | None = None,
                     mirror: Any = None, limit: int = 500, defer_handled: bool = False) -> DispatchReport:
    """Dispatch the undispatched events (of ``run_id``, or all), in sequence order per run.

    ``defer_handled`` is for a step's own worker, which mirrors and marks its run's events as soon
    as the step has committed, without a message to the events queue: it stops at the first event
    a handler subscribes to (a handler may call a model, which is the events queue's work, not a
    builder's), so the run's events still go out in order, and says so in ``report.deferred``.
    """
    handlers = HANDLERS if handlers is None else handlers
    report = DispatchReport()
    with session_scope(services.db_url) as s:
        q = select(Event).where(Event.dispatched == False).order_by(Event.run_id, Event.seq).limit(limit)  # noqa: E712 (matches ix_events_undispatched)
        if run_id is not None:
            q = q.where(Event.run_id == run_id)
        events = [event_dict(e) for e in s.scalars(q)]
    done_ids: list[int] = []
    for ev in events:
        subscribed = [h for h in handlers if ev["type"] in h.types]
        if defer_handled and subscribed:
            report.deferred = True
            break
        for h in subscribed:
            if h.prepare is None:
                _deliver(services, ev, h, report)
                continue
            # Two dispatchers of one run (the reconciler's, a failed step's, the events queue's two
            # processes) must not both do the paid preparation: one does it, the other then finds
            # the delivery made. A dispatcher that waited too long leaves the event (and the rest of
            # the batch) for a later one.
            with named_lock(services.db_url, f"event-handler:{ev['id']}:{h.name}", PREPARE_LOCK_WAIT_S) as held:
                if held:
                    _deliver(services, ev, h, report)
            if not held:
                report.busy = True
                break
        if report.busy:
            break
        if mirror is not None:
            if mirror.append(ev) is not None:
                report.mirrored += 1
        done_ids.append(ev["id"])
        report.events += 1
    # One transaction marks the batch: a dispatcher killed before it re-runs the batch, which is
    # safe (a handler's delivery row makes it run once; the mirror appends each event once).
    if done_ids:
        with session_scope(services.db_url) as s:
            s.execute(update(Event).where(Event.id.in_(done_ids)).values(dispatched=True).execution_options(synchronize_session=False))
    return report


def _deliver(services: Any, ev: dict[str, Any], h: Handler, report: DispatchReport) -> None:
    """Run handler ``h`` for ``ev`` once in effect: its writes and its delivery row commit together."""
    try:
        prepared = h.prepare(services, ev) if h.prepare is not None and not _delivered(services.db_url, ev["id"], h.name) else None
        with session_scope(services.db_url) as s:
            done = s.scalar(select(EventDelivery.id).where(EventDelivery.event_id == ev["id"], EventDelivery.handler == h.name))
            if done is not None:
                report.skipped.append(f"{ev['id']}:{h.name}")
                return
            s.add(EventDelivery(event_id=ev["id"], handler=h.name))
            s.flush()
            h.fn(s, services, {**ev, "prepared": prepared})
        report.deliveries += 1
    except IntegrityError:
        if not _delivered(services.db_url, ev["id"], h.name):
            raise  # the handler's own write failed: the event stays undispatched, for a retry
        report.skipped.append(f"{ev['id']}:{h.name}")  # another dispatcher delivered it first
    crash_point("mid_fanout")


def _delivered(db_url: str, event_id: int, handler: str) -> bool:
    with session_scope(db_url) as s:
        return s.scalar(select(EventDelivery.id).where(EventDelivery.event_id == event_id, EventDelivery.handler == handler)) is not None


def runs_with_undispatched(db_url: str, older_than_s: float = 5.0) -> list[str]:
    """Runs with an event not dispatched ``older_than_s`` after it was written, judged on the clock
    the events were written by (:func:`lease_clock`), not this machine's."""
    with session_scope(db_url) as s:
        cutoff = lease_clock(s) - timedelta(seconds=older_than_s)
        # ``== False`` (not ``IS false``): PostgreSQL then matches the partial index ix_events_undispatched.
        return list(s.scalars(select(Event.run_id).where(Event.dispatched == False, Event.created_at < cutoff).distinct()))  # noqa: E712
