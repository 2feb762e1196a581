"""Test support: the environment of a prod-profile cluster (Redis broker, PostgreSQL) in a test's
own state folder, without any AUTOPACK_* setting of the caller's."""

from __future__ import annotations

import os
from pathlib import Path


def prod_env(tmp_path: Path, broker: str, pg_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env.update(
        AUTOPACK_PROFILE="prod",
        AUTOPACK_STATE_DIR=str(tmp_path / "state"),
        AUTOPACK_REDIS_URL=broker,
        AUTOPACK_POSTGRES_URL=pg_url,
        AUTOPACK_API_URL=f"http://127.0.0.1:{port}",
        **extra,
    )
    return env
