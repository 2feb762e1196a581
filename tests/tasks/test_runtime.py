"""A step's worker sends its run's events out itself, and hands them to the events queue when it
cannot (here: the Redis Stream it mirrors to does not answer)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import select

from autopack.db.models import Event
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.events.stream import StreamMirror
from autopack.procs import free_port
from autopack.settings import Settings
from tasks.runtime import dispatch_after_step, set_services
from tests.engine.harness import demo_model, demo_plan, make_services, register


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
