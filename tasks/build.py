"""Queue ``build``: run setup and Builder steps."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.start_run", base=StepTask, step="start_run")
def start_run(run_id: str) -> list:
    return run_step(app, "start_run", run_id)


@app.task(name="autopack.build_phase", base=StepTask, step="build")
def build_phase(phase_id: int) -> list:
    return run_step(app, "build", phase_id)
