"""Queue ``ci``: test probes in the sandbox and the T0 baseline."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.baseline", base=StepTask, step="baseline")
def baseline(run_id: str) -> list:
    return run_step(app, "baseline", run_id)


@app.task(name="autopack.probe", base=StepTask, step="probe")
def probe(attempt_id: int) -> list:
    return run_step(app, "probe", attempt_id)
