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
# The suite runs in parallel processes (pytest-xdist, ``-n`` in pyproject.toml). Each process owns
# REDIS_DBS_PER_WORKER Redis databases of its own, counting down from REDIS_URL's (with the default
# and two processes: 15 down to 4), so that tests that flush a database or read a queue's length
# never see another process's messages. Database 0, Autopack's own default broker, is never used.
REDIS_DBS_PER_WORKER = 6
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
WORKER_INDEX = int(_WORKER[2:]) if _WORKER.startswith("gw") and _WORKER[2:].isdigit() else 0
PG_ADMIN_URL = os.environ.get("AUTOPACK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} is not reachable: {exc}"
    if REQUIRE:
        pytest.fail(f"{msg} (AUTOPACK_REQUIRE_SERVICES=1)")
    pytest.skip(msg)


def redis_db(k: int) -> str:
    """The URL of this test process's ``k``-th Redis database (0 is ``redis_url``'s): a test that
    wants a broker no other test shares takes one of 1..REDIS_DBS_PER_WORKER-1."""
    from urllib.parse import urlsplit, urlunsplit

    if not 0 <= k < REDIS_DBS_PER_WORKER:
        raise ValueError(f"a test process has Redis databases 0..{REDIS_DBS_PER_WORKER - 1}, not {k}")
    parts = urlsplit(REDIS_URL)
    first = parts.path.strip("/")
    if not first.isdigit():
        raise pytest.UsageError(f"AUTOPACK_TEST_REDIS_URL must name a database (redis://host:port/15), not {REDIS_URL!r}")
    index = int(first) - WORKER_INDEX * REDIS_DBS_PER_WORKER - k
    if index < 1:
        raise pytest.UsageError(f"test process {WORKER_INDEX} would use Redis database {index}: the tests take "
                                f"{REDIS_DBS_PER_WORKER} databases per process counting down from {first} and never 0; "
                                "run fewer processes (-n) or start from a higher database")
    return urlunsplit(parts._replace(path=f"/{index}"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = redis_db(0)
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    return url


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
    # Files with slow tests (whole clusters of processes) first, the rest in their order: the test
    # processes take files in this order, so the long ones do not end up last on one process
    # while the other has nothing left to do.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
    if not REQUIRE:
        return
    for item in items:
        for mark in item.iter_markers("skip"):
            raise pytest.UsageError(f"{item.nodeid} is skipped unconditionally while AUTOPACK_REQUIRE_SERVICES=1: {mark}")
