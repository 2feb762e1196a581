"""A plan submitted through the Flask API runs on a real Celery worker (in a thread, filesystem
transport) to DONE_SUCCESS: the tasks are thin shells that enqueue the next step by id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_prerun
from sqlalchemy import func, select

from autopack.db.models import Event
from autopack.db.session import session_scope
from autopack.plan import load_plan_file
from tasks.app import QUEUES, ROUTES, app
from tasks.runtime import set_services
from tests.engine.harness import DEMO, demo_model, make_services, register, view
from web import create_app

pytestmark = pytest.mark.sandbox


def wait_terminal(services, run_id: str, timeout: float = 120.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = view(services, run_id)
        if v["state"].startswith("DONE_") or v["state"] == "CANCELLED":
            return v
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not terminal after {timeout}s: {view(services, run_id)['state']}")


def test_every_step_is_routed_to_its_queue() -> None:
    for step, (name, queue) in ROUTES.items():
        assert name in app.tasks, step
        assert queue in QUEUES
        assert app.conf.task_routes[name] == {"queue": queue}
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    # Per-queue hard limits reach the task objects (soft limit a little earlier).
    from autopack.settings import get_settings
    from tasks.app import queue_time_limit

    settings = get_settings()
    for name, queue in ROUTES.values():
        task = app.tasks[name]
        assert task.time_limit == queue_time_limit(settings, queue)
        assert task.soft_time_limit < task.time_limit
    assert app.tasks["autopack.probe"].time_limit == settings.ci_time_limit != settings.default_time_limit


def test_run_through_api_and_worker(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    set_services(services)
    client = create_app(local_settings, config=services.config).test_client()
    ran: list[str] = []

    def count(sender, **_kw) -> None:  # type: ignore[no-untyped-def]
        ran.append(sender.name)

    task_prerun.connect(count, weak=False)
    try:
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, queues=list(QUEUES), shutdown_timeout=30):
            resp = client.post("/runs", json=load_plan_file(DEMO / "plan.yaml").model_dump(mode="json"))
            assert resp.status_code == 202, resp.get_json()
            run_id = resp.get_json()["id"]
            v = wait_terminal(services, run_id)
            deadline = time.monotonic() + 30  # the postmortem follows the run's end
            while client.get(f"/runs/{run_id}/postmortem").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        task_prerun.disconnect(count)
        set_services(None)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert [p["attempts"] for t in v["tiers"] for p in t["phases"]] == [2, 2, 1]
    events = client.get(f"/runs/{run_id}/events").get_json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.finished" and events[-1]["payload"]["state"] == "DONE_SUCCESS"
    # Each step's worker sent its events out itself; only run.finished, which handlers take (the
    # postmortem, the rules), went to the events queue's dispatcher: from the last step, and from a
    # step before it whose worker came to its events only after run.finished was written (the
    # last audit's, say, on a busy machine). Before, every one of the 20 steps sent it.
    assert ran.count("autopack.decide") == 5
    assert 1 <= ran.count("autopack.events.dispatch") <= 3, ran
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.run_id == run_id, Event.dispatched.is_(False))) == 0


def test_a_step_that_fails_for_good_ends_the_run(local_settings, demo_repo: Path) -> None:
    """The task's failure handler ends the run, and sends the dispatcher for its run.finished: the
    postmortem is written at once, not at the reconciler's next pass (there is no beat here)."""
    def respond(req):  # type: ignore[no-untyped-def]
        raise RuntimeError("model exploded")

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    set_services(services)
    client = create_app(local_settings, config=services.config).test_client()
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, queues=list(QUEUES), shutdown_timeout=30):
            run_id = client.post("/runs", json=load_plan_file(DEMO / "plan.yaml").model_dump(mode="json")).get_json()["id"]
            v = wait_terminal(services, run_id)
            deadline = time.monotonic() + 30
            while client.get(f"/runs/{run_id}/postmortem?format=json").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            postmortem = client.get(f"/runs/{run_id}/postmortem?format=json")
    finally:
        set_services(None)
    assert v["state"] == "DONE_FAILED_INFRASTRUCTURE"
    assert "model exploded" in v["failure_reason"] and "build" in v["failure_reason"]
    assert postmortem.status_code == 200, "the run.finished of a failed step was never dispatched"
    assert "DONE_FAILED_INFRASTRUCTURE" in postmortem.get_json()["markdown"]


def test_redis_visibility_timeout_is_above_every_queues_hard_limit() -> None:
    """A task still running when the visibility timeout passes would be delivered a second time."""
    from autopack.settings import Settings
    from tasks.app import celery_config, queue_time_limit

    for longest in ("build_time_limit", "ci_time_limit", "audit_time_limit", "default_time_limit"):
        settings = Settings(profile="prod", visibility_timeout=60, **{longest: 9 * 3600})
        conf = celery_config(settings)
        vt = conf["broker_transport_options"]["visibility_timeout"]
        assert vt > 9 * 3600, longest
        assert conf["result_backend_transport_options"]["visibility_timeout"] == vt == conf["visibility_timeout"]
        assert all(vt > queue_time_limit(settings, q) for q in QUEUES)


def test_runs_submitted_together_on_one_repository_all_finish(local_settings, demo_repo: Path) -> None:
    """Four runs of one project at once, on one worker with four threads: each gets its own worktree
    of the same repository and its own branch, and all finish. (The git race their setups could hit
    is reproduced, more reliably, by tests/workspace/test_worktree.py.)"""
    import subprocess

    services, _ = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    set_services(services)
    client = create_app(local_settings, config=services.config).test_client()
    plan = load_plan_file(DEMO / "plan.yaml").model_dump(mode="json")
    try:
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, queues=list(QUEUES), shutdown_timeout=30):
            ids = [client.post("/runs", json=plan).get_json()["id"] for _ in range(4)]
            views = [wait_terminal(services, run_id, timeout=240) for run_id in ids]
    finally:
        set_services(None)
    assert [v["state"] for v in views] == ["DONE_SUCCESS"] * 4, [v["failure_reason"] for v in views]
    for run_id in ids:  # three phases each, on the run's own branch
        count = subprocess.run(["git", "rev-list", "--count", f"main..autopack/{run_id}"], cwd=demo_repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        assert count == "3", (run_id, count)
