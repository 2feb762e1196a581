"""Pooled PostgreSQL connections are pinged before use only after sitting idle: back-to-back
transactions pay no ping, and a connection the server dropped while idle is replaced unseen."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

import autopack.db.session as db_session
from autopack.db.session import get_engine, session_scope


def _backend_pid(url: str) -> int:
    with session_scope(url) as s:
        return int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _count_pings(monkeypatch: pytest.MonkeyPatch, url: str) -> list[int]:
    dialect = get_engine(url).dialect
    real = dialect.do_ping
    pings: list[int] = []

    def counting(dbapi_conn):  # type: ignore[no-untyped-def]
        pings.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(dialect, "do_ping", counting)
    return pings


def test_back_to_back_transactions_are_not_pinged(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 60.0)
    pings = _count_pings(monkeypatch, pg_url)
    pids = {_backend_pid(pg_url) for _ in range(20)}
    assert pings == [] and len(pids) == 1  # one pooled connection, reused without a ping
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # now any pause counts as idle
    _backend_pid(pg_url)
    assert pings == [1]


def test_a_connection_the_server_dropped_while_idle_is_replaced(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)
    pings = _count_pings(monkeypatch, pg_url)
    first = _backend_pid(pg_url)
    # The server ends that backend (a restart, an idle timeout, a network drop look the same to us).
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
    second = _backend_pid(pg_url)  # no error reaches the caller
    assert second != first and len(pings) >= 1


def test_sqlite_read_only_sessions_are_not_blocked_by_an_open_write_transaction(tmp_path: Path) -> None:
    # WAL lets readers read while one writer writes, but every transaction began with BEGIN
    # IMMEDIATE, reads included: the API's GETs and event streams queued behind every write
    # transaction of every process (up to busy_timeout, then "database is locked"). A read-only
    # session (what the API's GETs use) begins a plain transaction.
    import sqlite3
    import threading

    from autopack.db.migrate import upgrade

    db = tmp_path / "r.sqlite"
    upgrade(f"sqlite:///{db}")
    url = f"sqlite:///{db}"
    with session_scope(url) as s:  # the engine exists and the file is in WAL mode
        s.execute(text("SELECT 1"))
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO projects (name, repo_path, base_branch, created_at) VALUES ('p', '/r', 'main', '2026-01-01')")
    done = threading.Event()

    def read() -> None:
        with session_scope(url, read_only=True) as s:
            s.execute(text("SELECT count(*) FROM projects")).scalar_one()
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert done.wait(3), "a read-only transaction waited for another process's write transaction"
    finally:
        writer.execute("COMMIT")
        writer.close()
        reader.join(35)
