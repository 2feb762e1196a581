"""Queue ``maintenance``: beat-scheduled upkeep — the reconciler."""

from __future__ import annotations

from typing import Any

from autopack.settings import get_settings
from tasks.app import app
from tasks.runtime import reconcile_and_enqueue, services


@app.task(name="autopack.maintenance.reconcile")
def reconcile() -> dict[str, Any]:
    """Re-enqueue steps whose lease expired or that no worker picked up; end overdue runs."""
    return reconcile_and_enqueue(app, services()).as_dict()


app.conf.beat_schedule = {
    "reconcile": {
        "task": "autopack.maintenance.reconcile",
        "schedule": get_settings().reconcile_interval_s,
        "options": {"queue": "maintenance", "expires": get_settings().reconcile_interval_s},
    },
}
