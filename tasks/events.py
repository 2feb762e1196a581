"""Queue ``events``: engine decisions and event dispatch."""

from __future__ import annotations

from autopack.errors import RetryableError
from autopack.events.dispatch import dispatch_pending
from tasks.app import app
from tasks.runtime import StepTask, run_step, services


@app.task(name="autopack.decide", base=StepTask)
def decide(step_id: int) -> list:
    return run_step(app, step_id)


@app.task(name="autopack.events.dispatch", autoretry_for=(RetryableError,), retry_backoff=True, max_retries=5)
def dispatch(run_id: str | None = None) -> dict:
    """Fan the run's undispatched events out to their handlers (idempotent: safe to run again)."""
    report = dispatch_pending(services(), run_id, mirror=services().mirror)
    return {"events": report.events, "deliveries": report.deliveries, "mirrored": report.mirrored}
