"""Queue ``ci``: test probes in the sandbox and the T0 baseline."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.baseline", base=StepTask)
def baseline(step_id: int) -> list:
    return run_step(app, step_id)


@app.task(name="autopack.probe", base=StepTask)
def probe(step_id: int) -> list:
    return run_step(app, step_id)
