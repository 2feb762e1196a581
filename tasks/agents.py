"""Queue ``agents``: auxiliary agents. ``ping`` lets operators and tests check a pool answers."""

from __future__ import annotations

from tasks.app import app


@app.task(name="autopack.agents.ping")
def ping() -> str:
    return "pong"
