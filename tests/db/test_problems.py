"""database_problem (autopack/db/problems.py) on the errors real databases raise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError

from autopack.db.problems import database_problem
from autopack.procs import free_port


def _error(url: str, sql: str) -> DBAPIError:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)"))
            conn.execute(text("INSERT INTO t (id) VALUES (1)"))
            conn.execute(text(sql))
    except DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{sql} did not fail")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_what_the_database_says(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'p.sqlite'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    assert database_problem(_error(url, "SELECT * FROM nothing_here")) == "schema"
    assert database_problem(_error(url, "SELECT missing_column FROM t")) == "schema"
    assert database_problem(_error(url, "INSERT INTO t (missing_column) VALUES (1)")) == "schema"
    assert database_problem(_error(url, "INSERT INTO t (id) VALUES (1)")) is None  # a duplicate key: a bug, not the database
    assert database_problem(_error(url, "SELEC 1")) is None  # a syntax error: a bug too
    assert database_problem(ValueError("x")) is None


def test_a_database_that_cannot_be_reached(tmp_path: Path) -> None:
    assert database_problem(_error("sqlite:////nonexistent/dir/x.sqlite", "SELECT 1")) == "unavailable"
    refused = _error(f"postgresql+psycopg://127.0.0.1:{free_port()}/test?connect_timeout=2", "SELECT 1")
    assert database_problem(refused) == "unavailable"


def _error_after(url: str, prepare: Callable[[Connection], None], sql: str) -> DBAPIError:
    """The error ``sql`` raises on a connection that ``prepare`` has set up."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            prepare(conn)
            try:
                conn.exec_driver_sql(sql)
            except DBAPIError as exc:
                return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{sql} did not fail")


def _fill(conn: Connection) -> None:
    conn.exec_driver_sql("CREATE TABLE big (b BLOB)")
    pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")  # the file may not grow: full


def _close(conn: Connection) -> None:
    conn.connection.dbapi_connection.close()  # type: ignore[union-attr]


def test_a_sqlite_database_that_cannot_take_a_write_now(tmp_path: Path) -> None:
    """Full, read-only, or its connection closed under the statement: the machine's state, which a
    later try may not meet (the step is left to its lease), not the statement's fault."""
    path = tmp_path / "s.sqlite"
    url = f"sqlite:///{path}"
    _error(url, "SELEC 1")  # creates the file and its table
    full = _error_after(url, _fill, "INSERT INTO big VALUES (zeroblob(100000))")
    assert "full" in str(full.orig), full
    assert database_problem(full) == "unavailable"
    readonly = _error(f"sqlite:///file:{path}?mode=ro&uri=true", "INSERT INTO t (id) VALUES (5)")
    assert "readonly" in str(readonly.orig), readonly
    assert database_problem(readonly) == "unavailable"
    closed = _error_after(url, _close, "SELECT 1")
    assert closed.connection_invalidated, closed
    assert database_problem(closed) == "unavailable"


def test_an_exhausted_connection_pool_is_an_infrastructure_error() -> None:
    # Every connection of the process's pool (5 + 10 overflow) busy for pool_timeout: SQLAlchemy
    # raises its own TimeoutError, not a DBAPIError. It says nothing about the step: the step must
    # be left to its lease, not end its run as DONE_FAILED_INFRASTRUCTURE (and the API must answer
    # 503, not 500).
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from autopack.engine.runner import is_infrastructure_error

    exc = PoolTimeout("QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00")
    assert is_infrastructure_error(exc)


@pytest.mark.postgres
def test_a_read_only_postgres_is_unavailable_not_the_steps_own_error(pg_url: str) -> None:
    # During a failover the old primary (or a standby the DNS name still points at) refuses writes
    # with SQLSTATE 25006. That is the database's state, as SQLite's "readonly database" already
    # counts; classified as the step's own error it ends the run.
    from autopack.db.session import get_engine

    with get_engine(pg_url).connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x int)")
        conn.commit()
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # what a standby's every transaction is
        with pytest.raises(DBAPIError) as info:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        conn.rollback()
    assert getattr(info.value.orig, "sqlstate", None) == "25006"
    assert database_problem(info.value) == "unavailable"
