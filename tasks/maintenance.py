"""Queue ``maintenance``: beat-scheduled upkeep — the reconciler, the cleanup of finished runs'
worktrees, and the ageing of known-flaky test records."""

from __future__ import annotations

from typing import Any

from autopack.engine.cleanup import remove_finished_worktrees, remove_left_temp
from autopack.engine.flakiness import age_records
from autopack.settings import get_settings
from tasks.app import app
from tasks.runtime import reconcile_and_enqueue, services


@app.task(name="autopack.maintenance.reconcile")
def reconcile() -> dict[str, Any]:
    """Re-enqueue steps whose lease expired or that no worker picked up; end overdue runs."""
    return reconcile_and_enqueue(app, services()).as_dict()


@app.task(name="autopack.maintenance.cleanup")
def cleanup() -> dict[str, Any]:
    """Remove the worktrees of runs over for longer than the retention, and the temp folders killed
    workers' steps left."""
    settings = services().settings
    report = remove_finished_worktrees(settings.db_url, settings.worktrees_dir, settings.worktree_retention_s).as_dict()
    return {**report, "temp_removed": remove_left_temp(settings)}


@app.task(name="autopack.maintenance.flakiness")
def flakiness() -> dict[str, Any]:
    """Clear the known-flaky records that flaked no more for a while; forget long-cleared ones."""
    svc = services()
    return age_records(svc.db_url, svc.config.strategy.flakiness).as_dict()


app.conf.beat_schedule = {
    "reconcile": {
        "task": "autopack.maintenance.reconcile",
        "schedule": get_settings().reconcile_interval_s,
        "options": {"queue": "maintenance", "expires": get_settings().reconcile_interval_s},
    },
    "cleanup": {
        "task": "autopack.maintenance.cleanup",
        "schedule": get_settings().cleanup_interval_s,
        "options": {"queue": "maintenance", "expires": get_settings().cleanup_interval_s},
    },
    "flakiness": {
        "task": "autopack.maintenance.flakiness",
        "schedule": get_settings().flakiness_interval_s,
        "options": {"queue": "maintenance", "expires": get_settings().flakiness_interval_s},
    },
}
