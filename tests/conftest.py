"""Shared fixtures: services (Redis, PostgreSQL) that are required when AUTOPACK_REQUIRE_SERVICES=1,
fresh state folders, migrated databases and demo repositories."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never touch a user's state folder or profile: the process-wide settings (the Celery app
# is configured from them at import) point at a fresh folder, local profile.
os.environ["AUTOPACK_STATE_DIR"] = tempfile.mkdtemp(prefix="autopack-tests-")
os.environ["AUTOPACK_PROFILE"] = "local"
for _var in ("AUTOPACK_DATABASE_URL", "AUTOPACK_BROKER_URL", "AUTOPACK_RESULT_BACKEND", "AUTOPACK_LLM_MODE", "AUTOPACK_CASSETTE"):
    os.environ.pop(_var, None)

from autopack.settings import Settings  # noqa: E402

REQUIRE = os.environ.get("AUTOPACK_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("AUTOPACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_ADMIN_URL = os.environ.get("AUTOPACK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} is not reachable: {exc}"
    if REQUIRE:
        pytest.fail(f"{msg} (AUTOPACK_REQUIRE_SERVICES=1)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    import psycopg

    name = f"autopack_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    from autopack.db.session import get_engine, known_urls

    for url in known_urls():
        if url.endswith("/" + name):
            get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def local_settings(tmp_path: Path) -> Settings:
    """Local-profile settings in a fresh state folder, database migrated."""
    from autopack.db.migrate import upgrade

    st = Settings(state_dir=tmp_path / "state", profile="local")
    st.state_path.mkdir(parents=True)
    upgrade(st.db_url)
    return st


@pytest.fixture()
def demo_repo(tmp_path: Path) -> Path:
    from autopack.demo import create_target_repo

    return create_target_repo(tmp_path / "calc")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not REQUIRE:
        return
    for item in items:
        for mark in item.iter_markers("skip"):
            raise pytest.UsageError(f"{item.nodeid} is skipped unconditionally while AUTOPACK_REQUIRE_SERVICES=1: {mark}")
