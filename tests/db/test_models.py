"""Helpers of the models module."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from autopack.db.migrate import upgrade
from autopack.db.models import Project, as_utc
from autopack.db.session import session_scope


def test_as_utc_reads_a_naive_timestamp_as_utc_and_keeps_an_aware_one() -> None:
    assert as_utc(datetime(2026, 11, 29, 23, 30)) == datetime(2026, 11, 29, 23, 30, tzinfo=timezone.utc)
    plus_two = datetime(2026, 11, 30, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus_two) is plus_two
    assert as_utc(None) is None


def test_as_utc_restores_what_sqlite_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url)
    written = datetime(2026, 11, 29, 23, 30, 15, tzinfo=timezone.utc)
    with session_scope(url) as s:
        s.add(Project(name="p", repo_path="/nonexistent", base_branch="main", created_at=written))
    with session_scope(url) as s:
        read = s.query(Project).one().created_at
    assert read.tzinfo is None  # what SQLite gives back
    assert as_utc(read) == written
