"""database_problem (autopack/db/problems.py) on the errors real databases raise."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
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
