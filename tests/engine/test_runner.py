"""The step runner and the reconciler (autopack/engine/runner.py) on SQLite, in-process: every
effect is read back from the database. Time is moved by back-dating rows, never by sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from autopack.db.models import Attempt, BudgetReservation, Event, Phase, Run, StepRow, Tier
from autopack.db.session import session_scope
from autopack.engine.leases import CURRENT_STEP, StaleLease, StepContext, claim, now_utc
from autopack.engine.ledger import reserve
from autopack.engine.runner import CLAIM_ATTR, claim_of, create_step, execute, fail_step_row, is_infrastructure_error, reconcile
from autopack.engine.services import Services
from autopack.engine.steps import STEPS
from autopack.engine.store import StaleState
from autopack.errors import RetryableError
from autopack.settings import Settings
from autopack.workspace import worktree as wt
from tests.engine.harness import demo_plan, make_services, register, submit

HOURS = 3600.0


def _no_model(req):  # type: ignore[no-untyped-def]
    raise AssertionError(f"no model call expected here: {req.system[:40]}")


@pytest.fixture()
def services(local_settings: Settings, tmp_path: Path) -> Services:
    """Engine services on the state folder's database, with a project whose repository these tests
    never touch (the ones that run ``start_run`` register the demo repository instead)."""
    svc, _ = make_services(local_settings, _no_model)
    register(local_settings, tmp_path / "no-repo")
    return svc


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _new_run(svc: Services, state: str = "RUNNING", *, age_s: float = 0.0, max_runtime_s: int | None = None) -> str:
    """A run of the demo plan, moved to ``state`` and created ``age_s`` seconds ago."""
    run_id = submit(svc, demo_plan())
    with session_scope(svc.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.state = state
        run.created_at = now_utc() - timedelta(seconds=age_s)
        if max_runtime_s is not None:
            run.strategy = {**run.strategy, "run": {**run.strategy["run"], "max_runtime_s": max_runtime_s}}
    return run_id


def _step(svc: Services, run_id: str, name: str = "build", arg: Any = 1, *, enqueued_ago_s: float = 0.0,
          lease: str | None = None, deliveries: int = 0, done: str | None = None) -> int:
    """A step row: ``lease`` is None (never claimed), "live" or "expired"; ``done`` an outcome."""
    sid, _ = create_step(svc.db_url, run_id, name, arg)
    now = now_utc()
    with session_scope(svc.db_url) as s:
        row = s.get(StepRow, sid)
        assert row is not None
        row.enqueued_at = now - timedelta(seconds=enqueued_ago_s)
        if lease is not None:
            row.fence, row.lease_owner = max(deliveries, 1), "dead-worker"
            row.lease_expires_at = now + timedelta(seconds=60 if lease == "live" else -1)
        row.deliveries = deliveries or (1 if lease else 0)
        if done is not None:
            row.done_at, row.outcome, row.lease_expires_at = now, done, None
    return sid


def _row(svc: Services, sid: int) -> StepRow:
    with session_scope(svc.db_url) as s:
        row = s.get(StepRow, sid)
        assert row is not None
        return row


def _run(svc: Services, run_id: str) -> Run:
    with session_scope(svc.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        return run


def _events(svc: Services, run_id: str, type_: str | None = None) -> list[Event]:
    with session_scope(svc.db_url) as s:
        q = select(Event).where(Event.run_id == run_id).order_by(Event.seq)
        if type_ is not None:
            q = q.where(Event.type == type_)
        return list(s.scalars(q))


def _steps_of(svc: Services, run_id: str, name: str | None = None) -> list[StepRow]:
    with session_scope(svc.db_url) as s:
        q = select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.id)
        if name is not None:
            q = q.where(StepRow.name == name)
        return list(s.scalars(q))


# ------------------------------------------------------------------------------------------------ reconcile: steps


def test_reconcile_requeues_expired_and_never_picked_up_steps_but_not_live_or_fresh_ones(services: Services) -> None:
    grace = services.settings.pickup_grace_s
    run_id = _new_run(services)
    expired = _step(services, run_id, "probe", 5, enqueued_ago_s=grace + 60, lease="expired")
    lost = _step(services, run_id, "build", 6, enqueued_ago_s=grace + 60)
    fresh = _step(services, run_id, "build", 7, enqueued_ago_s=grace / 2)
    live = _step(services, run_id, "audit", 8, enqueued_ago_s=grace + 60, lease="live")
    done = _step(services, run_id, "decide", 9, enqueued_ago_s=grace + 60, done="ok")
    before = {sid: _row(services, sid) for sid in (expired, lost, fresh, live, done)}
    t0 = now_utc()

    report = reconcile(services)

    assert report.requeued == [(expired, "probe"), (lost, "build")]
    assert report.timed_out == [] and report.closed_steps == 0
    for sid in (expired, lost):
        assert _aware(_row(services, sid).enqueued_at) >= t0  # type: ignore[operator]
    for sid in (fresh, live, done):
        assert _row(services, sid).enqueued_at == before[sid].enqueued_at
    # Re-enqueueing hands the step back; it does not claim it or touch its lease and fence.
    after = _row(services, expired)
    assert (after.fence, after.deliveries, after.lease_owner, after.done_at) == (1, 1, "dead-worker", None)
    assert _row(services, live).lease_expires_at == before[live].lease_expires_at
    # Both got a fresh grace period: the next pass sends no second message for either.
    assert reconcile(services).requeued == []


def test_a_step_whose_lease_ran_out_is_handed_back_once_then_again_only_after_the_grace(services: Services) -> None:
    """Its lease expired (the worker died): re-enqueued at once, but not on every pass after that while
    the queue is backlogged; if no worker took that message within the pickup grace, once more."""
    grace = services.settings.pickup_grace_s
    run_id = _new_run(services)
    sid = _step(services, run_id, "probe", 5, enqueued_ago_s=5, lease="expired")  # enqueued just before it was claimed
    assert reconcile(services).requeued == [(sid, "probe")]
    assert reconcile(services).requeued == []
    with session_scope(services.db_url) as s:  # the message sat in the queue past the grace
        s.execute(update(StepRow).where(StepRow.id == sid).values(enqueued_at=now_utc() - timedelta(seconds=grace + 1)))
    assert reconcile(services).requeued == [(sid, "probe")]
    # A new worker claims it and dies too: its new lease runs out, and it is handed back at once.
    got = claim(services.db_url, sid, "second-worker", 30)
    assert got is not None
    with session_scope(services.db_url) as s:  # (claimed 40 s after that message was sent, 30 s lease)
        s.execute(update(StepRow).where(StepRow.id == sid).values(enqueued_at=now_utc() - timedelta(seconds=71),
                                                                  lease_expires_at=now_utc() - timedelta(seconds=1)))
    assert reconcile(services).requeued == [(sid, "probe")]


def test_a_run_that_cannot_be_ended_does_not_hold_up_the_rest_of_the_pass(services: Services) -> None:
    """A run the pass fails on (here its stored strategy is unreadable) is skipped, logged and tried
    again next pass; every other run's overdue end and lost steps go ahead."""
    broken = _new_run(services, "RUNNING", age_s=7 * HOURS)
    with session_scope(services.db_url) as s:
        run = s.get(Run, broken)
        assert run is not None
        good_strategy = run.strategy
        run.strategy = {**run.strategy, "run": {**run.strategy["run"], "max_runtime_s": "soon"}}
    overdue = _new_run(services, "RUNNING", age_s=7 * HOURS)
    lost = _step(services, overdue, "build", 1, enqueued_ago_s=600)
    other = _new_run(services, "RUNNING")
    other_lost = _step(services, other, "build", 2, enqueued_ago_s=600)

    report = reconcile(services)

    assert report.timed_out == [overdue]
    assert _run(services, broken).state == "RUNNING" and _run(services, overdue).state == "DONE_FAILED_TIMEOUT"
    assert report.requeued == [(other_lost, "build")] and report.closed_steps == 1
    assert _row(services, lost).outcome == "run_finished"
    with session_scope(services.db_url) as s:  # repaired: the next pass ends it
        s.execute(update(Run).where(Run.id == broken).values(strategy=good_strategy))
    assert reconcile(services).timed_out == [broken]


def test_reconcile_waits_for_the_pickup_grace_period(services: Services) -> None:
    run_id = _new_run(services)
    sid = _step(services, run_id, "build", 1, enqueued_ago_s=300)
    services.settings.pickup_grace_s = 600
    assert reconcile(services).requeued == []
    services.settings.pickup_grace_s = 120
    assert reconcile(services).requeued == [(sid, "build")]


# ------------------------------------------------------------------------------------------------ reconcile: runs


def test_reconcile_ends_runs_past_their_maximum_runtime(services: Services) -> None:
    overdue = _new_run(services, "RUNNING", age_s=7 * HOURS)  # the strategy's default: 6 h
    short = _new_run(services, "PLANNING", age_s=120, max_runtime_s=60)
    young = _new_run(services, "RUNNING", age_s=1 * HOURS)
    old_done = _new_run(services, "DONE_SUCCESS", age_s=30 * HOURS)
    # The overdue run's open steps, one lost and one with an expired lease: closed, not requeued.
    lost = _step(services, overdue, "build", 1, enqueued_ago_s=600)
    expired = _step(services, overdue, "probe", 2, enqueued_ago_s=600, lease="expired")
    young_lost = _step(services, young, "build", 3, enqueued_ago_s=600)
    events_before = len(_events(services, overdue))

    report = reconcile(services)

    assert sorted(report.timed_out) == sorted([overdue, short])
    assert report.requeued == [(young_lost, "build")]
    assert report.closed_steps == 2
    for run_id, limit in ((overdue, 21600), (short, 60)):
        run = _run(services, run_id)
        reason = f"run exceeded its maximum runtime of {limit}s"
        assert (run.state, run.failure_reason) == ("DONE_FAILED_TIMEOUT", reason)
        assert run.finished_at is not None
        last = _events(services, run_id)[-1]
        assert (last.type, last.payload) == ("run.finished", {"state": "DONE_FAILED_TIMEOUT", "reason": reason})
    assert len(_events(services, overdue)) == events_before + 1
    for sid in (lost, expired):
        row = _row(services, sid)
        assert row.done_at is not None and row.outcome == "run_finished" and row.lease_expires_at is None
    assert _run(services, young).state == "RUNNING"
    assert _run(services, old_done).state == "DONE_SUCCESS" and _events(services, old_done, "run.finished") == []
    # Nothing is left to do on a second pass.
    again = reconcile(services)
    assert (again.timed_out, again.requeued, again.closed_steps) == ([], [], 0)


def test_reconcile_uses_an_explicit_maximum_runtime_over_the_strategys(services: Services) -> None:
    two_hours = _new_run(services, "RUNNING", age_s=2 * HOURS)
    assert reconcile(services).timed_out == []
    assert reconcile(services, max_runtime_s=HOURS).timed_out == [two_hours]
    run = _run(services, two_hours)
    assert (run.state, run.failure_reason) == ("DONE_FAILED_TIMEOUT", "run exceeded its maximum runtime of 3600s")


def test_an_overdue_queued_run_is_ended_and_does_not_block_the_reconciler(services: Services) -> None:
    """A run no build worker took before its maximum runtime (still QUEUED) times out like any other.
    (QUEUED -> DONE_FAILED_TIMEOUT was illegal once: the pass raised, rolled back and, on every pass
    after, re-enqueued nothing of any run.)"""
    stuck = _new_run(services, "QUEUED", age_s=7 * HOURS)
    other = _new_run(services, "RUNNING")
    lost = _step(services, other, "build", 1, enqueued_ago_s=600)

    report = reconcile(services)

    assert report.timed_out == [stuck]
    assert _run(services, stuck).state == "DONE_FAILED_TIMEOUT"
    assert report.requeued == [(lost, "build")]


def test_reconcile_closes_the_open_steps_of_finished_runs(services: Services) -> None:
    cancelled = _new_run(services, "CANCELLED")
    finished = _new_run(services, "DONE_FAILED_CI_FAILED")
    running = _new_run(services, "RUNNING")
    held = _step(services, cancelled, "build", 1, lease="live")  # a worker still holds it
    waiting = _step(services, cancelled, "probe", 2, enqueued_ago_s=600)
    already = _step(services, finished, "decide", 3, done="ok")
    open_running = _step(services, running, "build", 4, lease="live")
    already_done_at = _row(services, already).done_at

    report = reconcile(services)

    assert report.closed_steps == 2 and report.requeued == []
    for sid in (held, waiting):
        row = _row(services, sid)
        assert row.done_at is not None and row.outcome == "run_finished" and row.lease_expires_at is None
    assert (_row(services, already).outcome, _row(services, already).done_at) == ("ok", already_done_at)
    assert _row(services, open_running).done_at is None
    # The worker still running the cancelled run's step can no longer finish it.
    assert claim(services.db_url, held, "w", 60) is None


def test_reconcile_charges_orphan_reservations(services: Services) -> None:
    """What a dead worker reserved is charged at its worst case (see autopack/engine/ledger.py);
    a live step's reservation stays held, and an overdue run's is charged in the pass that ends it."""
    run_id = _new_run(services, "RUNNING")
    overdue = _new_run(services, "RUNNING", age_s=7 * HOURS)
    live = _step(services, run_id, "build", 1, lease="live")
    dead = _step(services, run_id, "build", 2, lease="expired")
    overdue_step = _step(services, overdue, "build", 3, lease="live")
    with session_scope(services.db_url) as s:
        held = reserve(s, run_id, None, 100, 0.01, None, step=(live, 1))
        orphan = reserve(s, run_id, None, 200, 0.02, None, step=(dead, 1))
        cut = reserve(s, overdue, None, 300, 0.03, None, step=(overdue_step, 1))
    before = _run(services, run_id)

    report = reconcile(services)

    assert report.charged_reservations == 2
    with session_scope(services.db_url) as s:
        states = {r.id: r.state for r in s.scalars(select(BudgetReservation))}
    assert states == {held.id: "open", orphan.id: "charged", cut.id: "charged"}
    run = _run(services, run_id)
    assert (run.tokens_reserved, run.tokens_used) == (100, before.tokens_used + 200)
    assert run.cost_reserved_usd == pytest.approx(0.01) and run.cost_usd == pytest.approx(before.cost_usd + 0.02)
    ended = _run(services, overdue)
    assert ended.state == "DONE_FAILED_TIMEOUT" and (ended.tokens_reserved, ended.tokens_used) == (0, 300)
    assert reconcile(services).charged_reservations == 0  # charged once


def test_reconcile_reports_runs_with_undispatched_events(services: Services) -> None:
    stale = _new_run(services, "RUNNING")
    fresh = _new_run(services, "RUNNING")
    handled = _new_run(services, "RUNNING")
    old = now_utc() - timedelta(seconds=60)
    with session_scope(services.db_url) as s:
        s.execute(update(Event).where(Event.run_id.in_([stale, handled])).values(created_at=old))
        s.execute(update(Event).where(Event.run_id == handled).values(dispatched=True))
    assert reconcile(services).undispatched_runs == [stale]


# ------------------------------------------------------------------------------------------------ execute


def test_execute_runs_a_step_under_a_claim_and_a_second_delivery_does_nothing(local_settings: Settings, demo_repo: Path) -> None:
    svc, _ = make_services(local_settings, _no_model)
    register(local_settings, demo_repo)
    run_id = submit(svc, demo_plan())
    sid, _ = create_step(svc.db_url, run_id, "start_run", run_id)

    created = execute(svc, sid, owner="w1")

    baselines = _steps_of(svc, run_id, "baseline")
    assert created == [(baselines[0].id, "baseline")] and len(baselines) == 1
    assert (baselines[0].arg, baselines[0].done_at, baselines[0].fence) == (run_id, None, 0)
    row = _row(svc, sid)
    assert (row.fence, row.deliveries, row.lease_owner, row.outcome, row.lease_expires_at) == (1, 1, "w1", "ok", None)
    assert row.done_at is not None
    run = _run(svc, run_id)
    assert run.state == "PLANNING" and run.base_commit is not None
    events = [e.type for e in _events(svc, run_id)]
    assert events == ["run.queued", "run.planning", "run.branch_created"]
    assert CURRENT_STEP.get() is None

    # The same message delivered again (or a duplicate): the step is done, nothing runs or changes.
    assert execute(svc, sid, owner="w2") == []
    row = _row(svc, sid)
    assert (row.fence, row.deliveries, row.lease_owner, row.outcome) == (1, 1, "w1", "ok")
    assert len(_steps_of(svc, run_id)) == 2
    assert [e.type for e in _events(svc, run_id)] == events


def test_a_worker_whose_lease_was_taken_over_discards_its_result(local_settings: Settings, demo_repo: Path) -> None:
    """Worker A stalls in a build, waiting on the model, past its lease; B takes the step over and
    finishes it; when A's answer comes back, its writes are refused and it creates no step. The
    stall is the model's (the outside world): its answer to A arrives after B ran the whole step."""
    from tests.engine.harness import demo_model

    good = demo_model()
    state: dict[str, Any] = {"sid": None, "took_over": None}
    worker_b, _ = make_services(local_settings, demo_model())  # another worker, with its own model client

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder") and state["sid"] is not None and state["took_over"] is None:
            sid = state["sid"]
            with session_scope(local_settings.db_url) as s:  # A's lease runs out while it waits
                s.execute(update(StepRow).where(StepRow.id == sid).values(lease_expires_at=now_utc() - timedelta(seconds=1)))
            state["took_over"] = []
            state["took_over"] += execute(worker_b, sid, owner="B")
        return good(req)

    svc, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(svc, demo_plan())
    queue = [create_step(svc.db_url, run_id, "start_run", run_id)]
    while queue[0][1] != "build":  # start_run, baseline: up to the first build
        queue = execute(svc, queue[0][0], owner="driver") + queue[1:]
    sid = queue[0][0]
    state["sid"] = sid

    assert execute(svc, sid, owner="A") == []  # A's result is discarded

    probes = _steps_of(svc, run_id, "probe")
    assert len(probes) == 1 and state["took_over"] == [(probes[0].id, "probe")]
    row = _row(svc, sid)
    assert (row.fence, row.deliveries, row.lease_owner, row.outcome) == (2, 2, "B", "ok")
    with session_scope(svc.db_url) as s:  # B continued A's attempt: one attempt, one candidate
        attempts = list(s.scalars(select(Attempt).where(Attempt.run_id == run_id)))
    assert len(attempts) == 1 and attempts[0].candidate_commit is not None
    assert [e.type for e in _events(svc, run_id)].count("attempt.started") == 1


def test_execute_passes_the_typed_argument_and_names_the_step_it_runs(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _new_run(services)
    sid = _step(services, run_id, "probe", 17)
    seen: list[tuple[Any, Any, int]] = []

    def probe(svc: Services, arg: Any, ctx: Any) -> list[Any]:
        seen.append((arg, CURRENT_STEP.get(), ctx.token))
        return []  # a step that decides there is nothing to do and does not finish itself

    monkeypatch.setitem(STEPS, "probe", probe)
    assert execute(services, sid, owner="w1") == []
    assert seen == [(17, (sid, 1), 1)]
    assert CURRENT_STEP.get() is None
    row = _row(services, sid)
    assert row.done_at is not None and row.outcome == "noop" and row.lease_expires_at is None


def test_a_real_step_with_nothing_to_do_is_closed_as_noop(services: Services) -> None:
    run_id = _new_run(services, "QUEUED")  # baseline only runs for a PLANNING run
    sid = _step(services, run_id, "baseline", run_id)
    assert execute(services, sid, owner="w1") == []
    row = _row(services, sid)
    assert (row.outcome, row.fence) == ("noop", 1) and row.done_at is not None
    assert _run(services, run_id).state == "QUEUED"


def test_execute_leaves_a_step_held_by_a_live_lease_alone(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _new_run(services)
    sid = _step(services, run_id, "probe", 1, lease="live")
    calls: list[Any] = []
    monkeypatch.setitem(STEPS, "probe", lambda *a: calls.append(a) or [])
    assert execute(services, sid, owner="w2") == []
    assert calls == []
    row = _row(services, sid)
    assert (row.fence, row.deliveries, row.lease_owner, row.done_at) == (1, 1, "dead-worker", None)


def test_a_stale_lease_raised_inside_a_step_is_swallowed_and_nothing_is_written(services: Services,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _new_run(services)
    sid = _step(services, run_id, "probe", 1)

    def probe(svc: Services, arg: Any, ctx: Any) -> list[Any]:
        # Another worker took the step over while this one worked.
        with session_scope(svc.db_url) as s:
            s.execute(update(StepRow).where(StepRow.id == sid).values(fence=StepRow.fence + 1, lease_owner="other"))
        with session_scope(svc.db_url) as s:
            run = s.get(Run, run_id)
            assert run is not None
            run.head_commit = "late"
            return ctx.finish(s, [("decide", 1)])

    monkeypatch.setitem(STEPS, "probe", probe)
    assert execute(services, sid, owner="w1") == []
    assert _run(services, run_id).head_commit is None
    assert _steps_of(services, run_id, "decide") == []
    row = _row(services, sid)
    assert (row.fence, row.lease_owner, row.done_at) == (2, "other", None)


# ------------------------------------------------------------------------------------------------ give_up


def _running_phase(svc: Services, run_id: str) -> tuple[int, int, int]:
    """Put the run's first phase mid-attempt: (tier id, phase id, attempt id)."""
    with session_scope(svc.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.state = "RUNNING"
        ph = s.scalar(select(Phase).where(Phase.run_id == run_id, Phase.key == "stats"))
        assert ph is not None
        ph.tier.state, ph.state, ph.attempts_used = "RUNNING", "EXECUTING", 1
        a = Attempt(phase_id=ph.id, run_id=run_id, number=1, state="BUILDING")
        s.add(a)
        s.flush()
        ph.current_attempt_id = a.id
        return ph.tier_id, ph.id, a.id


def test_a_step_that_keeps_killing_its_worker_fails_its_phase_and_ends_the_run(services: Services,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _new_run(services, "RUNNING")
    tier_id, phase_id, attempt_id = _running_phase(services, run_id)
    limit = services.settings.max_deliveries
    # Delivered ``limit`` times already; each worker died holding it (its lease ran out).
    sid = _step(services, run_id, "probe", attempt_id, enqueued_ago_s=600, lease="expired", deliveries=limit)
    calls: list[Any] = []
    monkeypatch.setitem(STEPS, "probe", lambda *a: calls.append(a) or [])

    assert execute(services, sid, owner="w") == []

    assert calls == []  # the step is not run again
    reason = f"step probe lost its worker {limit} times"
    with session_scope(services.db_url) as s:
        a, ph, tier = s.get(Attempt, attempt_id), s.get(Phase, phase_id), s.get(Tier, tier_id)
        assert a is not None and ph is not None and tier is not None
        assert (a.state, a.failure_class, a.failure, a.decision) == ("FAILED", "worker_lost", reason, "fail")
        assert (ph.state, ph.feedback) == ("FAILED", reason)
        assert tier.state == "BLOCKED"
    run = _run(services, run_id)
    assert (run.state, run.failure_reason) == ("DONE_FAILED_TIER_BLOCKED", f"phase stats failed: {reason}")
    failed = _events(services, run_id, "phase.failed")
    assert [(e.phase_key, e.payload) for e in failed] == [("stats", {"reason": reason})]
    assert _events(services, run_id)[-1].payload["state"] == "DONE_FAILED_TIER_BLOCKED"
    row = _row(services, sid)
    assert (row.outcome, row.deliveries, row.lease_expires_at) == ("given_up", limit + 1, None) and row.done_at is not None

    # Not a loop: the reconciler has nothing to hand back, another delivery does nothing.
    events = len(_events(services, run_id))
    report = reconcile(services)
    assert report.requeued == [] and report.timed_out == []
    assert execute(services, sid, owner="w") == [] and calls == []
    assert len(_events(services, run_id)) == events and _row(services, sid).deliveries == limit + 1


def test_giving_up_a_decide_that_moved_the_branch_moves_it_back(local_settings: Settings, demo_repo: Path) -> None:
    """A decide that keeps dying between its branch move and its record (after_ref_moved) is given
    up: the phase fails, and the branch, which held the candidate of a phase never recorded
    complete, is moved back to the run's head."""
    import subprocess

    from autopack.workspace.git import Git

    svc, _ = make_services(local_settings, _no_model)
    register(local_settings, demo_repo)
    run_id = _new_run(svc, "RUNNING")
    _tier, _phase, attempt_id = _running_phase(svc, run_id)
    git = Git(demo_repo)
    head = git.rev_parse("refs/heads/main")
    assert head is not None
    env = {"PATH": "/usr/bin:/bin", "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}
    cand = subprocess.run(["git", "commit-tree", f"{head}^{{tree}}", "-p", head, "-m", "stats: candidate"], cwd=demo_repo,
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    with session_scope(svc.db_url) as s:
        run, a = s.get(Run, run_id), s.get(Attempt, attempt_id)
        assert run is not None and a is not None
        run.base_commit = run.head_commit = head
        a.candidate_commit, branch = cand, run.branch
    subprocess.run(["git", "update-ref", f"refs/heads/{branch}", cand], cwd=demo_repo, check=True, env=env)  # the move that was not recorded
    sid = _step(svc, run_id, "decide", attempt_id, lease="expired", deliveries=svc.settings.max_deliveries)

    assert execute(svc, sid, owner="w") == []

    assert _run(svc, run_id).state == "DONE_FAILED_TIER_BLOCKED"
    assert git.rev_parse(f"refs/heads/{branch}") == head


def test_the_last_allowed_delivery_still_runs_the_step(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _new_run(services, "RUNNING")
    _tier, _phase, attempt_id = _running_phase(services, run_id)
    limit = services.settings.max_deliveries
    sid = _step(services, run_id, "probe", attempt_id, lease="expired", deliveries=limit - 1)
    calls: list[Any] = []
    monkeypatch.setitem(STEPS, "probe", lambda *a: calls.append(a[1]) or [])
    assert execute(services, sid, owner="w") == []
    assert calls == [attempt_id]
    assert _row(services, sid).outcome == "noop" and _run(services, run_id).state == "RUNNING"


def test_giving_up_a_run_level_step_ends_the_run_as_an_infrastructure_failure(services: Services) -> None:
    run_id = _new_run(services, "PLANNING")
    limit = services.settings.max_deliveries
    sid = _step(services, run_id, "baseline", run_id, lease="expired", deliveries=limit)
    assert execute(services, sid, owner="w") == []
    run = _run(services, run_id)
    assert (run.state, run.failure_reason) == ("DONE_FAILED_INFRASTRUCTURE", f"step baseline lost its worker {limit} times")
    assert _row(services, sid).outcome == "given_up"
    with session_scope(services.db_url) as s:
        assert {p.state for p in s.scalars(select(Phase).where(Phase.run_id == run_id))} == {"QUEUED"}


def test_giving_up_start_run_of_a_queued_run_ends_the_run(services: Services) -> None:
    """A start_run whose worker keeps dying before its first commit (the run is still QUEUED) is given
    up and ends the run; it used to raise IllegalTransition, leaving the step to loop forever."""
    run_id = _new_run(services, "QUEUED")
    limit = services.settings.max_deliveries
    sid = _step(services, run_id, "start_run", run_id, lease="expired", deliveries=limit)
    assert execute(services, sid, owner="w") == []
    assert _run(services, run_id).state == "DONE_FAILED_INFRASTRUCTURE"
    assert _row(services, sid).outcome == "given_up"


def test_give_up_with_a_stale_claim_writes_nothing(services: Services) -> None:
    from autopack.engine.runner import give_up

    run_id = _new_run(services, "PLANNING")
    sid = _step(services, run_id, "baseline", run_id, lease="expired", deliveries=3)
    got = claim(services.db_url, sid, "w1", 60)
    assert got is not None
    with session_scope(services.db_url) as s:  # another worker took it over meanwhile
        s.execute(update(StepRow).where(StepRow.id == sid).values(fence=StepRow.fence + 1))
    with pytest.raises(StaleLease):
        give_up(services, got)
    assert _run(services, run_id).state == "PLANNING" and _row(services, sid).done_at is None


# ------------------------------------------------------------------------------------------------ fail_step_row


def _raised_by_holder(services: Services, sid: int, exc: BaseException) -> BaseException:
    """``exc`` as execute_step re-raises it: marked with the claim (the step's current fence)."""
    setattr(exc, CLAIM_ATTR, (sid, _row(services, sid).fence))
    return exc


def test_fail_step_row_ends_the_run_with_the_reason_and_closes_the_step(services: Services) -> None:
    run_id = _new_run(services, "RUNNING")
    sid = _step(services, run_id, "build", 5, lease="live")
    fail_step_row(services, sid, _raised_by_holder(services, sid, ValueError("boom")))
    run = _run(services, run_id)
    reason = "step build(5) failed: ValueError: boom"
    assert (run.state, run.failure_reason) == ("DONE_FAILED_INFRASTRUCTURE", reason) and run.finished_at is not None
    last = _events(services, run_id)[-1]
    assert (last.type, last.payload) == ("run.finished", {"state": "DONE_FAILED_INFRASTRUCTURE", "reason": reason})
    row = _row(services, sid)
    assert (row.outcome, row.lease_expires_at) == ("error", None) and row.done_at is not None


def test_fail_step_row_truncates_a_long_reason(services: Services) -> None:
    run_id = _new_run(services, "RUNNING")
    sid = _step(services, run_id, "build", 5)
    fail_step_row(services, sid, RuntimeError("x" * 10_000))
    reason = _run(services, run_id).failure_reason
    assert reason is not None and len(reason) == 4000 and reason.startswith("step build(5) failed: RuntimeError: xxx")


def test_fail_step_row_leaves_a_finished_run_and_a_done_step_as_they_are(services: Services) -> None:
    run_id = _new_run(services, "CANCELLED")
    open_sid = _step(services, run_id, "build", 1, lease="live")
    events = len(_events(services, run_id))
    fail_step_row(services, open_sid, _raised_by_holder(services, open_sid, ValueError("late")))
    run = _run(services, run_id)
    assert (run.state, run.failure_reason) == ("CANCELLED", None) and len(_events(services, run_id)) == events
    assert _row(services, open_sid).outcome == "error"

    running = _new_run(services, "RUNNING")
    done_sid = _step(services, running, "build", 2, done="ok")
    done_at = _row(services, done_sid).done_at
    fail_step_row(services, done_sid, ValueError("after the fact"))
    assert (_row(services, done_sid).outcome, _row(services, done_sid).done_at) == ("ok", done_at)
    assert _run(services, running).state == "DONE_FAILED_INFRASTRUCTURE"

    fail_step_row(services, 987654, ValueError("no such step"))  # nothing to do, no error


def test_a_stale_workers_error_leaves_the_run_and_the_step_to_the_worker_that_took_it_over(services: Services) -> None:
    """Worker A was paused past its lease and B re-claimed the step. A's error when it comes back
    (a lost compare-and-set, a soft time limit, the worktree B is using) must not end the run or
    close B's step: ``fail_step_row`` acts only for the step's holder."""
    run_id = _new_run(services, "RUNNING")
    sid = _step(services, run_id, "probe", 1)
    a = claim(services.db_url, sid, "A", ttl_s=-1)  # A's lease already ran out
    b = claim(services.db_url, sid, "B", ttl_s=60)
    assert a is not None and b is not None and b.token == a.token + 1
    late = ValueError("A's late error")
    setattr(late, CLAIM_ATTR, (sid, a.token))
    for exc in (late, ValueError("raised outside any claim")):  # B's lease is live either way
        assert fail_step_row(services, sid, exc) is None
        row = _row(services, sid)
        assert (row.fence, row.done_at, row.lease_owner) == (b.token, None, "B")
        assert _run(services, run_id).state == "RUNNING"
    held = ValueError("B's own error")
    setattr(held, CLAIM_ATTR, (sid, b.token))
    assert fail_step_row(services, sid, held) == run_id
    assert _run(services, run_id).state == "DONE_FAILED_INFRASTRUCTURE" and _row(services, sid).outcome == "error"


def test_execute_marks_an_error_with_its_claim_and_discards_a_lost_cas_after_a_takeover(services: Services) -> None:
    """What a step raises leaves execute() carrying the claim's fence; a compare-and-set lost after
    another worker took the step over is discarded like a stale lease, not raised."""
    run_id = _new_run(services, "RUNNING")
    sid = _step(services, run_id, "build", 5)

    def boom(_services: Services, _arg: object, _ctx: StepContext) -> None:
        raise ValueError("the step's own error")

    def taken_over(_services: Services, _arg: object, ctx: StepContext) -> None:
        with session_scope(services.db_url) as s:  # another worker claims the step meanwhile
            s.execute(update(StepRow).where(StepRow.id == ctx.step_id).values(fence=StepRow.fence + 1))
        raise StaleState("phase 5 is no longer QUEUED")

    original = STEPS["build"]
    try:
        STEPS["build"] = boom
        with pytest.raises(ValueError) as raised:
            execute(services, sid)
        assert claim_of(raised.value) == (sid, _row(services, sid).fence)
        sid2 = _step(services, run_id, "build", 6)
        STEPS["build"] = taken_over
        assert execute(services, sid2) == []
        assert _row(services, sid2).done_at is None and _run(services, run_id).state == "RUNNING"
    finally:
        STEPS["build"] = original


# ------------------------------------------------------------------------------------------------ is_infrastructure_error


def _real_db_error() -> BaseException:
    from sqlalchemy import create_engine, text

    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001
        return exc
    finally:
        engine.dispose()
    raise AssertionError("connected to port 1?")


def _real_redis_error() -> BaseException:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)).ping()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("connected to port 1?")


def _real_integrity_error(services: Services) -> BaseException:
    try:
        with session_scope(services.db_url) as s:
            s.add(StepRow(run_id="no-such-run", name="build", arg="1"))  # foreign key
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("the foreign key was not enforced")


def _real_sqlite_error(url: str, sql: str) -> BaseException:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    except Exception as exc:  # noqa: BLE001
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{sql!r} worked on {url}")


def test_sqlite_errors_are_told_apart_although_sqlite_calls_them_all_operational(services: Services, tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    away = _real_sqlite_error(f"sqlite:///{tmp_path / 'no-such-folder' / 'db.sqlite'}", "select 1")
    behind = _real_sqlite_error(services.db_url, "select no_such_column from runs")
    bug = _real_sqlite_error(services.db_url, "selec 1")
    assert all(isinstance(e, OperationalError) for e in (away, behind, bug)), (away, behind, bug)
    assert is_infrastructure_error(away), repr(away)  # the database cannot be opened: try again
    assert is_infrastructure_error(behind), repr(behind)  # a migration has not run yet: try again
    assert not is_infrastructure_error(bug), repr(bug)  # the step's own error: its run ends with it


def test_infrastructure_errors_are_told_apart_from_step_failures(services: Services) -> None:
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError

    db_down, redis_down = _real_db_error(), _real_redis_error()
    invalidated = DBAPIError("select 1", {}, Exception("server closed the connection"), connection_invalidated=True)
    for exc in (db_down, redis_down, invalidated, KombuOperationalError("broker gone"), RedisTimeoutError("slow"),
                ConnectionResetError("reset"), ConnectionRefusedError("refused")):
        assert is_infrastructure_error(exc), repr(exc)
    not_invalidated = DBAPIError("select 1", {}, Exception("syntax"), connection_invalidated=False)
    for exc in (_real_integrity_error(services), not_invalidated, ValueError("bad"), RuntimeError("model exploded"),
                StaleLease("taken"), RetryableError("later"), KeyError("x")):
        assert not is_infrastructure_error(exc), repr(exc)
