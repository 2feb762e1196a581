"""Queue ``agents``: auxiliary agents (the Doctor and the planner on a failed attempt). ``ping``
lets operators and tests check a pool answers."""

from __future__ import annotations

from tasks.app import app
from tasks.runtime import StepTask, run_step


@app.task(name="autopack.diagnose", base=StepTask)
def diagnose(step_id: int) -> list:
    return run_step(app, step_id)


@app.task(name="autopack.agents.ping")
def ping() -> str:
    return "pong"
