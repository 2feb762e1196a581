"""Queue ``audit``: Auditor reviews."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.audit", base=StepTask, step="audit")
def audit(attempt_id: int) -> list:
    return run_step(app, "audit", attempt_id)
