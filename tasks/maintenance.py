"""Queue ``maintenance``: beat-scheduled upkeep."""

from __future__ import annotations

from tasks.app import app


@app.task(name="autopack.maintenance.heartbeat")
def heartbeat() -> str:
    """Scheduled by beat so an operator can see beat and the maintenance pool are alive."""
    return "ok"


app.conf.beat_schedule = {
    "maintenance-heartbeat": {"task": "autopack.maintenance.heartbeat", "schedule": 300.0, "options": {"queue": "maintenance"}},
}
