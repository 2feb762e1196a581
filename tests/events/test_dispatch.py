"""The dispatcher delivers each event to each subscribed handler once in effect, even when it is
killed in the middle of a fan-out and run again; postmortems are written when runs end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import select, text

from autopack.db.models import Event, EventDelivery, ModelCall, Postmortem, Project, Run
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.events.dispatch import Handler, dispatch_pending
from autopack.settings import ROOT, Settings
from tests.engine.harness import demo_plan
from tests.events.effects import create_table, effect_handlers


def _two_runs(settings: Settings) -> list[str]:
    from autopack.config import load_config

    config = load_config(settings.config_dir)
    ids = []
    with session_scope(settings.db_url) as s:
        s.add(Project(name="demo", repo_path="/nonexistent", base_branch="main"))
    for _ in range(2):
        with session_scope(settings.db_url) as s:
            ids.append(runsvc.create_run(s, demo_plan(), config).id)
    with session_scope(settings.db_url) as s:
        runsvc.cancel_run(s, ids[0])
        create_table(s)
    return ids


def _effects(url: str) -> list[tuple[int, str]]:
    with session_scope(url) as s:
        return sorted(tuple(r) for r in s.execute(text("SELECT event_id, handler FROM handler_effects")))  # type: ignore[misc]


def test_killed_mid_fanout_then_rerun_delivers_each_once(local_settings: Settings) -> None:
    _two_runs(local_settings)
    env = {**os.environ, "AUTOPACK_CRASH_AT": "mid_fanout", "AUTOPACK_CRASH_DIR": str(local_settings.state_path / "crash")}
    child = subprocess.run([sys.executable, "-m", "tests.events._dispatch_child", local_settings.db_url], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -9, child.stdout + child.stderr  # killed after the first handler's commit
    with session_scope(local_settings.db_url) as s:  # the dispatcher goes by run, then sequence
        first_event = s.scalar(select(Event.id).order_by(Event.run_id, Event.seq).limit(1))
    assert _effects(local_settings.db_url) == [(first_event, "first")]
    services = SimpleNamespace(db_url=local_settings.db_url)
    report = dispatch_pending(services, handlers=effect_handlers())
    assert report.skipped == [f"{first_event}:first"]
    with session_scope(local_settings.db_url) as s:
        events = s.scalars(select(Event).order_by(Event.id)).all()
        assert all(e.dispatched for e in events) and len(events) == 3
        ids = [e.id for e in events]
    assert _effects(local_settings.db_url) == sorted((e, h) for e in ids for h in ("first", "second"))
    # And again: nothing new.
    assert dispatch_pending(services, handlers=effect_handlers()).deliveries == 0
    assert len(_effects(local_settings.db_url)) == 6


def test_postmortem_is_written_once_when_a_run_ends(local_settings: Settings) -> None:
    cancelled, _running = _two_runs(local_settings)
    services = SimpleNamespace(db_url=local_settings.db_url)
    dispatch_pending(services)
    dispatch_pending(services)
    with session_scope(local_settings.db_url) as s:
        pms = s.scalars(select(Postmortem)).all()
        assert [p.run_id for p in pms] == [cancelled]
        assert pms[0].markdown.startswith(f"# Postmortem of run {cancelled}")
        assert "**Outcome:** CANCELLED" in pms[0].markdown
        # run.cancelled went once to each handler that takes it: the postmortem and the flaky-test fold.
        assert sorted(s.scalars(select(EventDelivery.handler))) == ["flakiness", "postmortem"]


def test_a_steps_worker_dispatches_up_to_the_first_handled_event_and_leaves_the_rest(local_settings: Settings) -> None:
    cancelled, running = _two_runs(local_settings)
    services = SimpleNamespace(db_url=local_settings.db_url)
    only_cancel = [Handler(h.name, frozenset({"run.cancelled"}), h.fn) for h in effect_handlers()]
    appended: list[tuple[str, int]] = []
    mirror = SimpleNamespace(append=lambda ev: appended.append((ev["run_id"], ev["seq"])) or "1-0")

    def undispatched(run_id: str) -> list[str]:
        with session_scope(local_settings.db_url) as s:
            return list(s.scalars(select(Event.type).where(Event.run_id == run_id, Event.dispatched.is_(False)).order_by(Event.seq)))

    # The cancelled run: run.queued goes out here; run.cancelled, which a handler takes, stays.
    report = dispatch_pending(services, cancelled, handlers=only_cancel, mirror=mirror, defer_handled=True)
    assert (report.events, report.deliveries, report.deferred) == (1, 0, True)
    assert appended == [(cancelled, 1)] and undispatched(cancelled) == ["run.cancelled"]
    assert _effects(local_settings.db_url) == []
    # The other run has no handled event: all of it goes out, nothing is deferred.
    report = dispatch_pending(services, running, handlers=only_cancel, mirror=mirror, defer_handled=True)
    assert (report.events, report.deferred) == (1, False) and undispatched(running) == []
    # The events queue's dispatcher then delivers the rest, in order.
    report = dispatch_pending(services, cancelled, handlers=only_cancel, mirror=mirror)
    assert (report.events, report.deliveries, report.deferred) == (1, 2, False)
    assert appended == [(cancelled, 1), (running, 1), (cancelled, 2)] and undispatched(cancelled) == []
    with session_scope(local_settings.db_url) as s:
        cancel_event = s.scalar(select(Event.id).where(Event.run_id == cancelled, Event.type == "run.cancelled"))
    assert _effects(local_settings.db_url) == [(cancel_event, "first"), (cancel_event, "second")]


def test_a_handler_whose_own_write_breaks_a_unique_key_leaves_its_event_for_a_retry(local_settings: Settings) -> None:
    """An IntegrityError from the handler is not 'another dispatcher delivered it first': the
    dispatch fails, nothing of the handler stays, the event is not marked, and a retry delivers it."""
    import pytest
    from sqlalchemy.exc import IntegrityError

    cancelled, _running = _two_runs(local_settings)
    services = SimpleNamespace(db_url=local_settings.db_url)
    writes = {"n": 2}

    def write(session, _services, event):  # type: ignore[no-untyped-def]
        for _ in range(writes["n"]):  # the second time breaks (event_id, handler)'s unique key
            session.add(EventDelivery(event_id=event["id"], handler="dup-effect"))
            session.flush()

    handler = Handler("dup", frozenset({"run.cancelled"}), write)
    with pytest.raises(IntegrityError):
        dispatch_pending(services, cancelled, handlers=[handler])
    with session_scope(local_settings.db_url) as s:
        assert s.scalars(select(EventDelivery)).all() == []
        assert s.scalar(select(Event.dispatched).where(Event.run_id == cancelled, Event.type == "run.cancelled")) is False
    writes["n"] = 1
    assert dispatch_pending(services, cancelled, handlers=[handler]).deliveries == 1
    with session_scope(local_settings.db_url) as s:
        assert sorted(s.scalars(select(EventDelivery.handler))) == ["dup", "dup-effect"]


def test_two_dispatchers_of_one_run_make_one_narrative_model_call(local_settings: Settings, tmp_path: Path) -> None:
    """The reconciler sends a dispatcher for a run every pass while its events are undispatched
    (and a failed step sends one too), so the events queue's processes run two for one run. The
    postmortem's narrative (a paid model call, the handler's ``prepare``) must be made once."""
    from autopack.engine import runs as runsvc
    from tests.engine.harness import demo_plan, make_services

    calls: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        calls.append(req.system[:30])
        time.sleep(0.5)  # a model answers in seconds
        return "The run was cancelled before it started."

    services, _ = make_services(local_settings, respond)
    learning = services.config.strategy.learning.model_copy(update={"narrative_model": "claude-haiku-4-5"})
    services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"learning": learning})})
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    with session_scope(local_settings.db_url) as s:
        run_id = runsvc.create_run(s, demo_plan(), services.config).id
    with session_scope(local_settings.db_url) as s:
        runsvc.cancel_run(s, run_id)

    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            dispatch_pending(services, run_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    with session_scope(local_settings.db_url) as s:
        narrative_calls = s.scalars(select(ModelCall).where(ModelCall.run_id == run_id, ModelCall.role == "postmortem")).all()
    assert len(calls) == 1 and len(narrative_calls) == 1, (calls, len(narrative_calls))


def test_two_runs_of_a_project_ending_together_retire_a_rule_once(pg_url: str, tmp_path: Path) -> None:
    """The ``rules`` handler of run.finished retires the project's stale rules and tells it with a
    ``rule.retired`` event. Two runs of one project ending together (two dispatchers on the events
    queue) must retire each rule once, not both (one ``rule.retired`` per rule), as the promotion
    and the flaky-test fold make sure by locking the project first."""
    from datetime import timedelta

    from autopack.config import load_config
    from autopack.db.migrate import upgrade
    from autopack.db.models import Rule
    from autopack.engine import runs as runsvc
    from autopack.engine.steps import _end_run
    from autopack.states import RunState
    from tests.engine.harness import demo_plan

    upgrade(pg_url)
    settings = Settings(state_dir=tmp_path / "state", profile="local", database_url=pg_url)
    config = load_config(settings.config_dir)
    old = datetime.now(timezone.utc) - timedelta(days=90)
    with session_scope(pg_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    with session_scope(pg_url) as s:
        project = runsvc.get_project(s, "demo")
        for i in range(40):  # rules nothing matched for 90 days: the next run.finished retires them
            s.add(Rule(project_id=project.id, key=f"k{i}", text=f"rule {i}", scope_pattern="src/**", provenance={},
                       created_at=old, updated_at=old))
    runs = []
    for _ in range(2):
        with session_scope(pg_url) as s:
            runs.append(runsvc.create_run(s, demo_plan(), config).id)
    for run_id in runs:
        with session_scope(pg_url) as s:
            _end_run(s, s.get(Run, run_id), RunState.DONE_FAILED_SETUP, "test")
    services = SimpleNamespace(db_url=pg_url, config=config)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def dispatcher(run_id: str) -> None:
        barrier.wait()
        try:
            dispatch_pending(services, run_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with session_scope(pg_url) as s:
        assert set(s.scalars(select(Rule.status))) == {"retired"}
        retired = [e.payload["rule_id"] for e in s.scalars(select(Event).where(Event.type == "rule.retired"))]
    assert len(retired) == 40 and len(set(retired)) == 40, f"{len(retired)} rule.retired events for {len(set(retired))} rules"
