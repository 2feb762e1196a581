"""Restart Redis (the broker; nothing persisted, so queued messages are lost) and PostgreSQL in the
middle of a run on the prod profile: the run still finishes, with the invariants intact."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from autopack.db.migrate import upgrade
from autopack.db.models import Phase
from autopack.db.session import get_engine, session_scope
from tests.chaos.cluster import Cluster, assert_invariants, base_env
from tests.chaos.servers import PostgresServer, RedisServer
from tests.conftest import redis_db

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def _wait_phase_in_flight(cluster: Cluster, run_id: str, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with session_scope(cluster.db_url) as s:
                ph = s.scalar(select(Phase).where(Phase.run_id == run_id, Phase.key == key))
                if ph is not None and ph.state in ("EXECUTING", "GATE", "RETRY"):
                    return
        except Exception:  # noqa: BLE001 - the database may be restarting
            pass
        time.sleep(0.05)
    raise AssertionError(f"phase {key} never got in flight")


def test_redis_restart_mid_run(tmp_path: Path, pg_url: str, demo_repo: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    env = base_env(tmp_path / "state", AUTOPACK_PROFILE="prod", AUTOPACK_REDIS_URL=redis_server.url, AUTOPACK_POSTGRES_URL=pg_url)
    cluster = Cluster(tmp_path / "state", env)
    try:
        cluster.start("prefork")
        cluster.register(demo_repo)
        run_id = cluster.submit()
        _wait_phase_in_flight(cluster, run_id, "parse")
        redis_server.stop()
        time.sleep(1.0)
        redis_server.start()
        state = cluster.wait_terminal(run_id, timeout=150)
    finally:
        cluster.stop()
        redis_server.stop()
    assert state == "DONE_SUCCESS", (tmp_path / "state" / "worker.log").read_text()[-3000:]
    assert assert_invariants(cluster.db_url, demo_repo, run_id)["commits"] == 3


def test_postgres_restart_mid_phase(tmp_path: Path, redis_url: str, demo_repo: Path) -> None:
    pg = PostgresServer()
    try:
        _postgres_restart_mid_phase(pg, tmp_path, redis_url, demo_repo)
    finally:
        pg.remove()


def _postgres_restart_mid_phase(pg: PostgresServer, tmp_path: Path, redis_url: str, demo_repo: Path) -> None:
    pg.init()
    pg.start()
    broker = redis_db(3)
    import redis

    redis.Redis.from_url(broker).flushdb()
    upgrade(pg.url)
    get_engine(pg.url).dispose()
    env = base_env(tmp_path / "state", AUTOPACK_PROFILE="prod", AUTOPACK_REDIS_URL=broker, AUTOPACK_POSTGRES_URL=pg.url)
    cluster = Cluster(tmp_path / "state", env)
    try:
        cluster.start("prefork")
        cluster.register(demo_repo)
        run_id = cluster.submit()
        _wait_phase_in_flight(cluster, run_id, "stats")
        pg.stop("immediate")
        time.sleep(1.5)
        pg.start()
        state = cluster.wait_terminal(run_id, timeout=150)
    finally:
        cluster.stop()
        get_engine(pg.url).dispose()
        pg.stop("immediate")
        redis.Redis.from_url(broker).flushdb()
    assert state == "DONE_SUCCESS", (tmp_path / "state" / "worker.log").read_text()[-3000:]
    pg.start()
    try:
        assert assert_invariants(cluster.db_url, demo_repo, run_id)["commits"] == 3
    finally:
        get_engine(pg.url).dispose()
        pg.stop("immediate")
