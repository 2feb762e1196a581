"""Queue ``build``: run setup and Builder steps."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.start_run", base=StepTask)
def start_run(step_id: int) -> list:
    return run_step(app, step_id)


@app.task(name="autopack.build_phase", base=StepTask)
def build_phase(step_id: int) -> list:
    return run_step(app, step_id)
