"""A step's worker sends its run's events out itself, and hands them to the events queue when it
cannot (here: the Redis Stream it mirrors to does not answer)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from autopack.db.models import Event, Run, StepRow
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.events.stream import StreamMirror
from autopack.procs import WORKER_GROUPS, free_port
from autopack.settings import Settings
from tasks.app import app
from tasks.runtime import dispatch_after_step, set_services
from tests.engine.harness import call_step, demo_model, demo_plan, make_services, register, submit


class Broker:
    """Records what would be published (the Celery app's ``send_task``)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        self.sent.append((name, args, queue))


def _queued_run(settings: Settings) -> str:
    register(settings, settings.state_path)
    with session_scope(settings.db_url) as s:
        from autopack.config import load_config

        return runsvc.create_run(s, demo_plan(), load_config(settings.config_dir)).id


def _undispatched(settings: Settings, run_id: str) -> list[str]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(Event.type).where(Event.run_id == run_id, Event.dispatched.is_(False))))


def test_the_events_go_out_from_the_steps_worker_without_a_message(local_settings: Settings) -> None:
    services, _ = make_services(local_settings, demo_model())
    run_id = _queued_run(local_settings)
    broker = Broker()
    set_services(services)
    try:
        dispatch_after_step(broker, run_id)  # type: ignore[arg-type]
    finally:
        set_services(None)
    assert broker.sent == [] and _undispatched(local_settings, run_id) == []


def test_when_the_mirror_is_down_the_events_queue_gets_them(local_settings: Settings) -> None:
    services, _ = make_services(local_settings, demo_model())
    down = StreamMirror.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    run_id = _queued_run(local_settings)
    broker = Broker()
    set_services(dataclasses.replace(services, mirror=down))
    try:
        dispatch_after_step(broker, run_id)  # type: ignore[arg-type]
    finally:
        set_services(None)
    assert broker.sent == [("autopack.events.dispatch", [run_id], "events")]
    assert _undispatched(local_settings, run_id) == ["run.queued"]  # nothing marked that was not mirrored


@pytest.mark.sandbox
def test_a_step_over_its_time_limit_is_stopped_and_left_to_its_lease(local_settings: Settings, demo_repo: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The build queue's limits (soft 870 s, hard 900 s by default) are stopped on the pool the
    Procfile runs (prefork: the thread pool ignored them, so a hung Builder step ran for good).
    Here the real task gets 2 s (soft 1 s) and the Builder's model answers after 6 s: the step is
    stopped, and the run goes on: the step is left to its lease, for the reconciler to send again
    (a step that keeps running over is given up after max_deliveries, failing its phase)."""
    pool = dict((name, p) for name, _, p, _ in WORKER_GROUPS)["build"]
    good = demo_model()

    def slow_builder(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            time.sleep(6)
        return good(req)

    services, _ = make_services(local_settings, slow_builder)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    assert call_step(services, run_id, "start_run", run_id) == [("baseline", run_id)]
    nxt = call_step(services, run_id, "baseline", run_id)
    assert nxt and nxt[0][0] == "build", nxt
    from autopack.engine.runner import create_step

    step_id, _ = create_step(services.db_url, run_id, "build", nxt[0][1])
    task = app.tasks["autopack.build_phase"]
    monkeypatch.setattr(task, "time_limit", 2, raising=False)
    monkeypatch.setattr(task, "soft_time_limit", 1, raising=False)
    set_services(services)
    try:
        with start_worker(app, pool=pool, concurrency=4, perform_ping_check=False, queues=["build", "audit"],
                          shutdown_timeout=30):
            started = time.monotonic()
            result = app.send_task("autopack.build_phase", args=[step_id], queue="build")
            result.get(timeout=60, propagate=False)
            took = time.monotonic() - started
    finally:
        set_services(None)
    assert result.state == "FAILURE" and took < 4, (
        f"pool {pool!r}: the build step with a 2 s hard limit ran {took:.1f}s and ended {result.state}"
    )
    with session_scope(services.db_url) as s:
        row, run = s.get(StepRow, step_id), s.get(Run, run_id)
        assert row is not None and run is not None
        assert row.done_at is None and row.deliveries == 1 and run.state == "RUNNING", (row.outcome, run.state, run.failure_reason)
        # The step keeps its note; once its deliveries are used up, giving it up says why.
        assert row.outcome == "time_limit"
        row.deliveries, row.lease_expires_at = services.settings.max_deliveries, None
    from autopack.engine.runner import execute

    assert execute(services, step_id) == []
    with session_scope(services.db_url) as s:
        row, run = s.get(StepRow, step_id), s.get(Run, run_id)
        assert row is not None and run is not None
        reason = f"step build did not finish in {services.settings.max_deliveries} deliveries: it ran over its time limit"
        assert (row.outcome, run.state) == ("given_up", "DONE_FAILED_TIER_BLOCKED"), (row.outcome, run.state)
        assert run.failure_reason.endswith(reason), run.failure_reason
