"""Queue ``events``: engine decisions."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.decide", base=StepTask)
def decide(step_id: int) -> list:
    return run_step(app, step_id)
