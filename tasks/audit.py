"""Queue ``audit``: Auditor reviews."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.audit", base=StepTask)
def audit(step_id: int) -> list:
    return run_step(app, step_id)
