"""Step rows, leases and fencing tokens (autopack/engine/leases.py), read back from the database:
SQLite for the semantics, PostgreSQL too where claimers race."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from autopack.db.migrate import upgrade
from autopack.db.models import Event, Project, Run, StepRow
from autopack.db.session import session_scope
from autopack.engine.leases import Heartbeat, StaleLease, StepContext, add_steps, claim, guard, mark_done, now_utc, renew
from autopack.engine.store import emit
from tests.engine.harness import as_worker_with_clock


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'leases.sqlite'}"
    upgrade(url)
    return url


def _db(request: pytest.FixtureRequest, backend: str) -> str:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    if backend == "postgresql":
        upgrade(url)
    return url


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _run(url: str) -> str:
    with session_scope(url) as s:
        p = s.scalar(select(Project).where(Project.name == "p"))
        if p is None:
            p = Project(name="p", repo_path="/nonexistent", base_branch="main")
            s.add(p)
            s.flush()
        run = Run(project_id=p.id, plan={}, strategy={}, base_branch="main", branch="b", commit_epoch=0,
                  token_cap=1000, cost_cap_usd=1.0)
        s.add(run)
        s.flush()
        return run.id


def _step(url: str, run_id: str, name: str = "build", arg: object = 1) -> int:
    with session_scope(url) as s:
        return add_steps(s, run_id, [(name, arg)])[0].id


def _row(url: str, step_id: int) -> StepRow:
    with session_scope(url) as s:
        row = s.get(StepRow, step_id)
        assert row is not None
        return row


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC datetimes, PostgreSQL aware ones."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _expire(url: str, step_id: int) -> None:
    """The lease holder's time ran out (it died, or it is paused)."""
    with session_scope(url) as s:
        s.execute(update(StepRow).where(StepRow.id == step_id).values(lease_expires_at=now_utc() - timedelta(seconds=1)))


def _events(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(Event)) or 0)


def _step_count(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(StepRow)) or 0)


# ------------------------------------------------------------------------------------------------ add_steps


def test_add_steps_writes_open_unclaimed_rows_in_the_callers_transaction(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    with session_scope(sqlite_url) as s:
        rows = add_steps(s, run_id, [("build", 7), ("baseline", run_id)])
        ids = [r.id for r in rows]
        assert all(isinstance(i, int) for i in ids)  # flushed: the ids exist before the commit
    with session_scope(sqlite_url) as s:
        got = [s.get(StepRow, i) for i in ids]
        assert [(r.run_id, r.name, r.arg) for r in got] == [(run_id, "build", "7"), (run_id, "baseline", run_id)]
        for r in got:
            assert (r.fence, r.deliveries, r.lease_owner, r.lease_expires_at, r.done_at, r.outcome) == (0, 0, None, None, None, None)
            assert r.enqueued_at is not None
    # A caller whose transaction fails leaves no step behind.
    with pytest.raises(RuntimeError):
        with session_scope(sqlite_url) as s:
            add_steps(s, run_id, [("build", 8)])
            raise RuntimeError("the step's final write failed")
    assert _step_count(sqlite_url) == 2


# ------------------------------------------------------------------------------------------------ claim


def test_every_claim_raises_the_fence_and_counts_a_delivery(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id, "probe", 42)
    first = claim(sqlite_url, sid, "w1", 60)
    assert first is not None
    assert (first.step_id, first.run_id, first.name, first.arg, first.token, first.deliveries) == (sid, run_id, "probe", "42", 1, 1)
    row = _row(sqlite_url, sid)
    assert (row.fence, row.deliveries, row.lease_owner) == (1, 1, "w1")
    assert _aware(row.lease_expires_at) > now_utc() + timedelta(seconds=30)  # type: ignore[operator]

    # A live lease blocks a second claimer, which changes nothing (no delivery counted either).
    assert claim(sqlite_url, sid, "w2", 60) is None
    row = _row(sqlite_url, sid)
    assert (row.fence, row.deliveries, row.lease_owner) == (1, 1, "w1")

    # Once the lease has expired another worker takes it over, with the next fence.
    _expire(sqlite_url, sid)
    second = claim(sqlite_url, sid, "w2", 60)
    assert second is not None and (second.token, second.deliveries) == (2, 2)
    row = _row(sqlite_url, sid)
    assert (row.fence, row.deliveries, row.lease_owner) == (2, 2, "w2")
    _expire(sqlite_url, sid)
    third = claim(sqlite_url, sid, "w1", 60)
    assert third is not None and (third.token, third.deliveries) == (3, 3)


def test_a_done_step_cannot_be_claimed(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    got = claim(sqlite_url, sid, "w1", 60)
    assert got is not None
    with session_scope(sqlite_url) as s:
        mark_done(s, sid, got.token, "ok")
    row = _row(sqlite_url, sid)
    assert row.done_at is not None and row.outcome == "ok" and row.lease_expires_at is None
    assert claim(sqlite_url, sid, "w2", 60) is None  # done: no lease on it, still not claimable
    row = _row(sqlite_url, sid)
    assert (row.fence, row.deliveries, row.lease_owner, row.outcome) == (1, 1, "w1", "ok")


def test_claiming_a_missing_step_gets_nothing(sqlite_url: str) -> None:
    assert claim(sqlite_url, 12345, "w1", 60) is None
    assert _step_count(sqlite_url) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_claimers_racing_for_one_step_exactly_one_wins(backend: str, request: pytest.FixtureRequest) -> None:
    """Eight workers get the same message at once (a duplicate delivery, a requeue racing the
    original), for fresh steps and for steps whose lease just expired: one claim per step wins."""
    url = _db(request, backend)
    run_id = _run(url)
    fresh = [_step(url, run_id, "build", i) for i in range(4)]
    expired = [_step(url, run_id, "probe", i) for i in range(4)]
    for sid in expired:  # a dead worker's claim, fence 1
        assert claim(url, sid, "dead", 60) is not None
        _expire(url, sid)
    racers = 8
    won: dict[int, list[tuple[str, int]]] = {sid: [] for sid in fresh + expired}
    errors: list[BaseException] = []
    lock = threading.Lock()

    for sid in fresh + expired:
        barrier = threading.Barrier(racers)

        def one(i: int, sid: int = sid, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                got = claim(url, sid, f"w{i}", 60)
                if got is not None:
                    with lock:
                        won[sid].append((f"w{i}", got.token))
            except BaseException as exc:  # noqa: BLE001
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    for sid in fresh + expired:
        assert len(won[sid]) == 1, (sid, won[sid])
        owner, token = won[sid][0]
        row = _row(url, sid)
        expected = 1 if sid in fresh else 2
        assert (token, row.fence, row.deliveries, row.lease_owner) == (expected, expected, expected, owner)


# ------------------------------------------------------------------------------------------------ guard, mark_done, finish


def test_guard_passes_the_current_fence_and_refuses_a_stale_one_or_a_done_step(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    old = claim(sqlite_url, sid, "w1", 60)
    assert old is not None
    with session_scope(sqlite_url) as s:
        guard(s, sid, old.token)  # current: no error
    _expire(sqlite_url, sid)
    new = claim(sqlite_url, sid, "w2", 60)
    assert new is not None
    with session_scope(sqlite_url) as s:
        with pytest.raises(StaleLease):
            guard(s, sid, old.token)
        guard(s, sid, new.token)
    with session_scope(sqlite_url) as s:
        mark_done(s, sid, new.token, "ok")
    with session_scope(sqlite_url) as s:
        with pytest.raises(StaleLease):
            guard(s, sid, new.token)  # even the last fence: the step is done


def test_a_stale_workers_transaction_writes_nothing(sqlite_url: str) -> None:
    """The paused worker comes back after a takeover: its guarded transaction (here: an event and a
    run change before the guard) is rolled back whole."""
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    old = claim(sqlite_url, sid, "w1", 60)
    assert old is not None
    _expire(sqlite_url, sid)
    assert claim(sqlite_url, sid, "w2", 60) is not None
    events_before = _events(sqlite_url)
    with pytest.raises(StaleLease):
        with session_scope(sqlite_url) as s:
            run = s.get(Run, run_id)
            assert run is not None
            run.head_commit = "stale-worker-result"
            emit(s, run_id, "phase.completed")
            StepContext(sid, old.token, run_id).guard(s)
    with session_scope(sqlite_url) as s:
        run = s.get(Run, run_id)
        assert run is not None and run.head_commit is None and run.event_seq == 0
    assert _events(sqlite_url) == events_before


def test_mark_done_needs_the_current_fence_and_an_open_step(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    old = claim(sqlite_url, sid, "w1", 60)
    assert old is not None
    _expire(sqlite_url, sid)
    new = claim(sqlite_url, sid, "w2", 60)
    assert new is not None
    with pytest.raises(StaleLease):
        with session_scope(sqlite_url) as s:
            mark_done(s, sid, old.token, "ok")
    row = _row(sqlite_url, sid)
    assert row.done_at is None and row.outcome is None and row.lease_expires_at is not None
    with session_scope(sqlite_url) as s:
        mark_done(s, sid, new.token, "failed")
    row = _row(sqlite_url, sid)
    done_at = row.done_at
    assert done_at is not None and row.outcome == "failed" and row.lease_expires_at is None
    with pytest.raises(StaleLease):  # marking it done twice: the second is refused
        with session_scope(sqlite_url) as s:
            mark_done(s, sid, new.token, "ok")
    row = _row(sqlite_url, sid)
    assert row.outcome == "failed" and row.done_at == done_at


def test_finish_marks_done_and_hands_over_the_next_steps_in_one_transaction(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id, "build", 3)
    got = claim(sqlite_url, sid, "w1", 60)
    assert got is not None
    ctx = StepContext(sid, got.token, run_id)
    with session_scope(sqlite_url) as s:
        out = ctx.finish(s, [("probe", 11), ("audit", 11)])
    assert out == [("probe", 11), ("audit", 11)]
    assert ctx.finished
    assert [name for _id, name in ctx.new_steps] == ["probe", "audit"]
    row = _row(sqlite_url, sid)
    assert row.done_at is not None and row.outcome == "ok" and row.lease_expires_at is None
    with session_scope(sqlite_url) as s:
        created = [s.get(StepRow, i) for i, _n in ctx.new_steps]
        assert [(r.run_id, r.name, r.arg, r.done_at, r.fence) for r in created] == [
            (run_id, "probe", "11", None, 0), (run_id, "audit", "11", None, 0)]


def test_finish_with_a_stale_fence_adds_no_steps_and_marks_nothing(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id, "build", 3)
    old = claim(sqlite_url, sid, "w1", 60)
    assert old is not None
    _expire(sqlite_url, sid)
    assert claim(sqlite_url, sid, "w2", 60) is not None
    ctx = StepContext(sid, old.token, run_id)
    steps_before, events_before = _step_count(sqlite_url), _events(sqlite_url)
    with pytest.raises(StaleLease):
        with session_scope(sqlite_url) as s:
            emit(s, run_id, "attempt.built")  # the step's final write, in the same transaction
            ctx.finish(s, [("probe", 11)])
    assert not ctx.finished and ctx.new_steps == []
    assert (_step_count(sqlite_url), _events(sqlite_url)) == (steps_before, events_before)
    row = _row(sqlite_url, sid)
    assert row.done_at is None and row.outcome is None and (row.fence, row.lease_owner) == (2, "w2")


def test_finish_on_a_done_step_is_refused(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    got = claim(sqlite_url, sid, "w1", 60)
    assert got is not None
    with session_scope(sqlite_url) as s:
        StepContext(sid, got.token, run_id).finish(s, [("probe", 1)])
    steps_before = _step_count(sqlite_url)
    again = StepContext(sid, got.token, run_id)
    with pytest.raises(StaleLease):
        with session_scope(sqlite_url) as s:
            again.finish(s, [("probe", 1)], outcome="again")
    assert _step_count(sqlite_url) == steps_before and not again.finished
    assert _row(sqlite_url, sid).outcome == "ok"


# ------------------------------------------------------------------------------------------------ renew, Heartbeat


def test_only_the_current_fence_renews(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    old = claim(sqlite_url, sid, "w1", 5)
    assert old is not None
    before = _aware(_row(sqlite_url, sid).lease_expires_at)
    assert renew(sqlite_url, sid, old.token, 3600) is True
    renewed = _aware(_row(sqlite_url, sid).lease_expires_at)
    assert renewed > before + timedelta(seconds=3000)  # type: ignore[operator]

    _expire(sqlite_url, sid)
    new = claim(sqlite_url, sid, "w2", 60)
    assert new is not None
    taken = _row(sqlite_url, sid).lease_expires_at
    assert renew(sqlite_url, sid, old.token, 3600) is False  # the old holder cannot extend w2's lease
    assert _row(sqlite_url, sid).lease_expires_at == taken

    with session_scope(sqlite_url) as s:
        mark_done(s, sid, new.token, "ok")
    assert renew(sqlite_url, sid, new.token, 3600) is False  # a done step holds no lease
    assert _row(sqlite_url, sid).lease_expires_at is None


def _wait_for(cond, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Poll until ``cond()``; the timeout only bounds a hang, it is not what is tested."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.02)


def test_heartbeat_renews_the_lease_while_the_step_runs(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    ttl = 0.3
    got = claim(sqlite_url, sid, "w1", ttl)
    assert got is not None
    first = _aware(_row(sqlite_url, sid).lease_expires_at)
    seen: list[datetime] = []

    def renewed_twice() -> bool:
        cur = _aware(_row(sqlite_url, sid).lease_expires_at)
        if cur is not None and (not seen or cur > seen[-1]):
            seen.append(cur)
        return len(seen) >= 3

    with Heartbeat(sqlite_url, sid, got.token, ttl) as hb:
        _wait_for(renewed_twice, "two renewals of the lease")
    assert not hb._thread.is_alive()  # leaving the block stops the thread
    assert seen[-1] > first  # type: ignore[operator]
    row = _row(sqlite_url, sid)
    assert (row.fence, row.deliveries, row.lease_owner) == (1, 1, "w1")


def test_heartbeat_stops_after_a_takeover_and_never_extends_the_new_lease(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    sid = _step(sqlite_url, run_id)
    ttl = 0.3
    got = claim(sqlite_url, sid, "w1", ttl)
    assert got is not None
    hb = Heartbeat(sqlite_url, sid, got.token, ttl)
    with hb:
        # The worker is cut off (say, partitioned): its lease is found expired and w2 takes the step.
        # The heartbeat may renew in between; try again until the takeover lands.
        taken = None
        for _ in range(200):
            _expire(sqlite_url, sid)
            taken = claim(sqlite_url, sid, "w2", 3600)
            if taken is not None:
                break
        assert taken is not None and taken.token == 2
        w2_expiry = _row(sqlite_url, sid).lease_expires_at
        _wait_for(lambda: not hb._thread.is_alive(), "the heartbeat to notice it lost the lease")
        row = _row(sqlite_url, sid)
        assert (row.fence, row.lease_owner, row.lease_expires_at) == (2, "w2", w2_expiry)


# -- clocks: on PostgreSQL leases are set and judged by the database server's clock


@pytest.mark.postgres
def test_a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease(pg_url: str) -> None:
    """Machine B's clock is 10 minutes ahead. With leases judged by each worker's own clock, B took
    every live step over; on the database's clock the lease is live for B too."""
    upgrade(pg_url)
    sid = _step(pg_url, _run(pg_url))
    assert claim(pg_url, sid, "A", 60) is not None
    out = as_worker_with_clock("+10 minutes", pg_url, "from autopack.engine.leases import claim\nprint(claim(url, %d, 'B', 60))" % sid)
    assert out == "None"
    row = _row(pg_url, sid)
    assert (row.lease_owner, row.fence, row.deliveries) == ("A", 1, 1)


@pytest.mark.postgres
def test_a_worker_whose_clock_runs_behind_renews_a_lease_that_lasts_its_ttl(pg_url: str) -> None:
    """Machine A's clock is 10 minutes behind. Its renewals used to set an expiry already past on
    everyone else's clock; now a renewal lasts the TTL from the database's now."""
    from autopack.engine.leases import db_now

    upgrade(pg_url)
    sid = _step(pg_url, _run(pg_url))
    got = claim(pg_url, sid, "A", 60)
    assert got is not None
    out = as_worker_with_clock("-10 minutes", pg_url, "from autopack.engine.leases import renew\nprint(renew(url, %d, %d, 60))" % (sid, got.token))
    assert out == "True"
    with session_scope(pg_url) as s:
        left = (_aware(s.get(StepRow, sid).lease_expires_at) - db_now(s)).total_seconds()  # type: ignore[union-attr, operator]
    assert 50 < left <= 60, left
    assert claim(pg_url, sid, "B", 60) is None  # still A's


@pytest.mark.postgres
def test_a_reconciler_whose_clock_runs_ahead_leaves_live_leases_alone(pg_url: str) -> None:
    """The reconciler (beat's worker) on a machine 10 minutes ahead used to re-enqueue every live
    step; judged by the database's clock, only really expired leases are handed back."""
    upgrade(pg_url)
    run_id = _run(pg_url)
    with session_scope(pg_url) as s:
        s.execute(update(Run).where(Run.id == run_id).values(state="RUNNING"))
    live, dead = _step(pg_url, run_id), _step(pg_url, run_id, "probe", 2)
    assert claim(pg_url, live, "A", 60) is not None and claim(pg_url, dead, "C", 60) is not None
    with session_scope(pg_url) as s:  # sent 5 minutes ago; C took it and died 2 minutes ago, by the database's clock
        s.execute(update(StepRow).where(StepRow.id.in_([live, dead])).values(enqueued_at=func.now() - timedelta(minutes=5)))
        s.execute(update(StepRow).where(StepRow.id == dead).values(lease_expires_at=func.now() - timedelta(minutes=2)))
    code = ("import tempfile\nfrom autopack.settings import Settings\nfrom autopack.engine.services import build_services\n"
            "from autopack.engine.runner import reconcile\n"
            "settings = Settings(state_dir=tempfile.mkdtemp(), profile='local', database_url=url)\n"
            "print(reconcile(build_services(settings, sandbox=False)).requeued)")
    assert as_worker_with_clock("+10 minutes", pg_url, code) == f"[({dead}, 'probe')]"


@pytest.mark.postgres
def test_steps_and_runs_made_on_a_machine_whose_clock_runs_behind_are_timed_by_the_database(pg_url: str) -> None:
    """The API or a worker 10 minutes behind wrote ``enqueued_at`` and a run's ``created_at`` by its
    own clock: the reconciler (on the database's clock) then sent a fresh step again at once as never
    picked up, and would end a fresh run as past a maximum runtime under 10 minutes."""
    upgrade(pg_url)
    with session_scope(pg_url) as s:
        s.add(Project(name="p", repo_path="/nonexistent", base_branch="main"))
    code = ("from autopack.db.session import session_scope\nfrom autopack.engine.leases import add_steps\n"
            "from autopack.config import load_config\nfrom autopack.engine.runs import create_run\nfrom autopack.plan import Plan\n"
            "from autopack.settings import Settings\n"
            "plan = Plan.model_validate({'project': 'p', 'name': 'skewed', 'test_command': ['true'], 'tiers': [{'id': 't0', 'phases': [\n"
            "    {'id': 'p0', 'goal': 'g', 'category': 'feature', 'complexity': 'low', 'scope': ['a.txt']}]}]})\n"
            "with session_scope(url) as s:\n"
            "    run = create_run(s, plan, load_config(Settings().config_dir))\n"
            "    run.state = 'RUNNING'\n"
            "    print(run.id, add_steps(s, run.id, [('start_run', run.id)])[0].id)\n")
    run_id, step_id = as_worker_with_clock("-10 minutes", pg_url, code).split()
    from autopack.engine.leases import db_now

    with session_scope(pg_url) as s:
        now = db_now(s)
        row, run = s.get(StepRow, int(step_id)), s.get(Run, run_id)
        assert row is not None and run is not None
        assert abs((_aware(row.enqueued_at) - now).total_seconds()) < 30  # type: ignore[operator]
        assert abs((_aware(run.created_at) - now).total_seconds()) < 30  # type: ignore[operator]
    code = ("import tempfile\nfrom autopack.settings import Settings\nfrom autopack.engine.services import build_services\n"
            "from autopack.engine.runner import reconcile\n"
            "settings = Settings(state_dir=tempfile.mkdtemp(), profile='local', database_url=url)\n"
            "r = reconcile(build_services(settings, sandbox=False), max_runtime_s=300)\nprint(r.requeued, r.timed_out)")
    assert as_worker_with_clock("+0 minutes", pg_url, code) == "[] []"


@pytest.mark.postgres
@pytest.mark.parametrize("writer, reconciler", [("+10 minutes", "+0 minutes"), ("+0 minutes", "-10 minutes"),
                                                ("-10 minutes", "+0 minutes")])
def test_an_undispatched_event_is_judged_by_the_database_clock_whatever_the_machines_clocks(
        pg_url: str, writer: str, reconciler: str) -> None:
    """An event's age (the reconciler re-dispatches events left undispatched for a while) was its
    writer's clock against the reconciler's: a worker 10 minutes ahead, or a reconciler 10 minutes
    behind, left a lost dispatch alone for 10 minutes; a worker behind had fresh events, still being
    dispatched, sent again at once. Now both times are the database's."""
    from autopack.engine.leases import db_now

    upgrade(pg_url)
    run_id = _run(pg_url)
    code = ("from autopack.db.session import session_scope\nfrom autopack.engine.store import emit\n"
            f"with session_scope(url) as s:\n    emit(s, {run_id!r}, 'phase.started')\n")
    as_worker_with_clock(writer, pg_url, code)
    with session_scope(pg_url) as s:
        written = s.scalar(select(Event.created_at).where(Event.run_id == run_id))
        assert abs((_aware(written) - db_now(s)).total_seconds()) < 30  # type: ignore[operator]
    ask = "from autopack.events.dispatch import runs_with_undispatched\nprint(runs_with_undispatched(url, older_than_s=%s))"
    assert run_id not in as_worker_with_clock(reconciler, pg_url, ask % 20)  # fresh: its dispatcher may still be at work
    time.sleep(1.5)
    assert as_worker_with_clock(reconciler, pg_url, ask % 1) == repr([run_id])


@pytest.mark.postgres
def test_an_event_is_dated_when_it_is_written_not_when_its_transaction_began(pg_url: str) -> None:
    """now() is the transaction's start: an event written late in a long transaction was dated back,
    and looked undispatched for over 5 s the moment it committed (a second dispatcher at once)."""
    from sqlalchemy import text

    upgrade(pg_url)
    run_id = _run(pg_url)
    with session_scope(pg_url) as s:
        began = s.scalar(select(func.now()))
        s.execute(text("SELECT pg_sleep(1.2)"))
        emit(s, run_id, "phase.started")
    with session_scope(pg_url) as s:
        written = s.scalar(select(Event.created_at).where(Event.run_id == run_id))
    assert (written - began).total_seconds() >= 1.1  # type: ignore[operator]
