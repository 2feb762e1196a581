"""Beat's maintenance tasks (tasks/maintenance.py), scheduled on the maintenance queue and run by a
real worker (in a thread): the reconciler, the cleanup of finished runs' worktrees and the ageing of
known-flaky test records."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import update

from autopack.db.models import FlakyTest, Project, Run
from autopack.db.session import session_scope
from autopack.engine.leases import now_utc
from autopack.settings import Settings
from autopack.workspace import worktree as wt
from tasks.app import app
from tasks.runtime import set_services
from tests.engine.harness import demo_plan, make_services, register, submit


def test_the_maintenance_tasks_are_on_beats_schedule_on_the_maintenance_queue() -> None:
    import tasks.maintenance  # noqa: F401 - registers the tasks and the schedule

    schedule = app.conf.beat_schedule
    assert {e["task"] for e in schedule.values()} == {"autopack.maintenance.reconcile", "autopack.maintenance.cleanup",
                                                         "autopack.maintenance.flakiness"}
    for entry in schedule.values():
        assert entry["options"]["queue"] == "maintenance" and entry["task"] in app.tasks
        assert app.conf.task_routes[entry["task"]] == {"queue": "maintenance"}


def test_a_worker_runs_the_reconciler_the_cleanup_and_the_flakiness_ageing(local_settings: Settings, demo_repo: Path,
                                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "system-temp"  # the system's temp folder, as tempfile sees it: a killed worker left a tree a day ago
    (temp / "autopack-tree-left").mkdir(parents=True)
    os.utime(temp / "autopack-tree-left", (time.time() - 86400,) * 2)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    services, _ = make_services(local_settings, lambda req: "")
    register(local_settings, demo_repo)
    overdue, finished = submit(services, demo_plan()), submit(services, demo_plan())
    with session_scope(local_settings.db_url) as s:
        s.execute(update(Run).where(Run.id == overdue).values(state="RUNNING", created_at=now_utc() - timedelta(hours=7)))
        s.execute(update(Run).where(Run.id == finished).values(state="DONE_SUCCESS", finished_at=now_utc() - timedelta(hours=2)))
    path = wt.ensure_worktree(demo_repo, local_settings.worktrees_dir / finished, "main")
    long_ago = now_utc() - timedelta(days=services.config.strategy.flakiness.clear_after_days + 1)
    with session_scope(local_settings.db_url) as s:
        s.add(FlakyTest(project_id=s.query(Project).one().id, test_id="tests/t.py::test_x", state="quarantined", state_reason="",
                        flaky_count=2, runs=["a", "b"], passes_since_flaky=0, first_seen_at=long_ago, last_flaky_at=long_ago,
                        state_changed_at=long_ago))
    set_services(services)
    try:
        with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, queues=["maintenance"], shutdown_timeout=30):
            reconciled = app.send_task("autopack.maintenance.reconcile", queue="maintenance").get(timeout=60)
            cleaned = app.send_task("autopack.maintenance.cleanup", queue="maintenance").get(timeout=60)
            aged = app.send_task("autopack.maintenance.flakiness", queue="maintenance").get(timeout=60)
    finally:
        set_services(None)
    assert reconciled["timed_out"] == [overdue]
    with session_scope(local_settings.db_url) as s:
        run = s.get(Run, overdue)
        assert run is not None and run.state == "DONE_FAILED_TIMEOUT"
    assert cleaned["removed"] == [finished] and not path.exists()
    assert cleaned["temp_removed"] == ["autopack-tree-left"] and not (temp / "autopack-tree-left").exists()
    assert aged == {"cleared": ["demo: tests/t.py::test_x"], "forgotten": [], "kept": 1}
    with session_scope(local_settings.db_url) as s:
        assert s.query(FlakyTest).one().state == "cleared"
