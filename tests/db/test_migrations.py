"""Alembic migrations create exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from autopack.db.migrate import downgrade, upgrade
from autopack.db.models import Base

TABLES = {"projects", "runs", "tiers", "phases", "attempts", "model_calls", "events", "steps", "event_deliveries", "postmortems", "hints", "rules", "project_spend", "issues", "issue_occurrences", "flaky_tests"}


def _check(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], diff
    finally:
        engine.dispose()
    downgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert not TABLES & set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    upgrade(url)  # and back up again


def test_sqlite(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'm.sqlite'}")


@pytest.mark.postgres
def test_postgres(pg_url: str) -> None:
    _check(pg_url)


def _upgrade_concurrently(url: str, n: int = 2) -> list[str]:
    """``autopack migrate`` in ``n`` processes at once; the errors they printed."""
    code = "import sys; from autopack.db.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode != 0:
            found = [line for line in err.splitlines() if "Error" in line and not line.startswith(" ")]
            errors.append(found[-1][:300] if found else f"exit {p.returncode}")
    return errors


@pytest.mark.postgres
def test_two_migrations_at_once_on_postgres_both_succeed(pg_url: str) -> None:
    # `autopack migrate` run by two deploy steps (a compose migrate service and an init container,
    # two `autopack up`s) on a fresh database: the second must wait, then find nothing to do.
    errors = _upgrade_concurrently(pg_url)
    assert errors == [], errors


def test_two_migrations_at_once_on_sqlite_both_succeed(tmp_path: Path) -> None:
    # Four at once: before BEGIN EXCLUSIVE, about every other try had one fail half-way.
    errors = _upgrade_concurrently(f"sqlite:///{tmp_path / 'm.sqlite'}", n=4)
    assert errors == [], errors


def test_a_sqlite_migration_that_fails_half_way_can_be_run_again(tmp_path: Path) -> None:
    # A migration stopped part-way (killed, disk full, a statement refused) must leave the database
    # at its last complete revision, as PostgreSQL's transactional DDL does, so that running
    # `autopack migrate` again finishes it. Here 0002's last statement is refused (an index of that
    # name exists already), after its first ones were applied.
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX ix_reservations_state ON projects (name)")
    with pytest.raises(Exception):
        upgrade(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_reservations_state")
    upgrade(url)  # the operator fixed the cause and runs `autopack migrate` again
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
