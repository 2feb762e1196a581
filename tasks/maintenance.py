"""Queue ``maintenance``: beat-scheduled upkeep — the reconciler."""

from __future__ import annotations

from typing import Any

from autopack.engine.runner import reconcile as reconcile_runs
from autopack.settings import get_settings
from tasks.app import app
from tasks.runtime import enqueue, services


@app.task(name="autopack.maintenance.reconcile")
def reconcile() -> dict[str, Any]:
    """Re-enqueue steps whose lease expired or that no worker picked up; end overdue runs."""
    report = reconcile_runs(services())
    enqueue(app, report.requeued)
    for run_id in report.undispatched_runs:  # events a dispatcher did not finish
        app.send_task("autopack.events.dispatch", args=[run_id], queue="events")
    return report.as_dict()


app.conf.beat_schedule = {
    "reconcile": {
        "task": "autopack.maintenance.reconcile",
        "schedule": get_settings().reconcile_interval_s,
        "options": {"queue": "maintenance", "expires": get_settings().reconcile_interval_s},
    },
}
