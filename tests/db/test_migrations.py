"""Alembic migrations create exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

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
