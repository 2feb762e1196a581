"""Known-flaky tests in the database (autopack/engine/flakiness.py): folded in once per run by the
dispatcher's ``flakiness`` handler when the run ends, on SQLite and PostgreSQL, without losing a fold
when two runs of a project end together; aged by the maintenance task; set by hand by an operator."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from autopack.db.migrate import upgrade
from autopack.db.models import Attempt, Event, FlakyTest, Phase, Project, Run, as_utc
from autopack.db.session import session_scope
from autopack.engine.flakiness import age_records, project_flaky_tests, quarantined_tests, record_run, set_record_by_hand
from autopack.engine.store import emit
from autopack.errors import InvalidRequest, NotFound
from autopack.events.dispatch import dispatch_pending
from autopack.flakiness import FlakinessConfig
from autopack.settings import Settings
from tests.engine.harness import at_once, demo_plan, make_services, on_postgres, register, submit

T = "tests/test_core.py::test_add"
U = "tests/test_core.py::test_sub"
ENDED = datetime(2026, 11, 2, 8, 30, tzinfo=timezone.utc)  # when the runs below ended


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        st = Settings(state_dir=tmp_path / "state", profile="local")
    else:
        st = Settings(state_dir=tmp_path / "state", profile="local", database_url=request.getfixturevalue("pg_url"))
    st.state_path.mkdir(parents=True)
    upgrade(st.db_url)
    return st


def _finished_run(settings: Settings, services: Any, gates: list[tuple[dict[str, str], list[str]]]) -> str:
    """A run of the demo plan whose first phase had one attempt per (first-try outcomes, flaky
    tests), ended with its ``run.finished`` event, as the engine leaves it."""
    run_id = submit(services, demo_plan())
    with session_scope(settings.db_url) as s:
        phase = s.scalars(select(Phase).where(Phase.run_id == run_id).order_by(Phase.index)).first()
        assert phase is not None
        for number, (outcomes, flaky) in enumerate(gates, 1):
            s.add(Attempt(phase_id=phase.id, run_id=run_id, number=number, state="TESTED",
                          test_result={"outcomes": outcomes}, gate={"passed": True, "flaky": flaky}))
        run = s.get(Run, run_id)
        assert run is not None
        run.state, run.finished_at = "DONE_SUCCESS", ENDED
        emit(s, run_id, "run.finished", state="DONE_SUCCESS", reason=None)
    return run_id


def _rows(settings: Settings) -> dict[str, FlakyTest]:
    with session_scope(settings.db_url) as s:
        return {r.test_id: r for r in s.scalars(select(FlakyTest))}


def test_a_test_flaky_in_two_runs_is_quarantined_when_the_second_ends(settings: Settings, demo_repo: Path) -> None:
    services, _ = make_services(settings, lambda req: "")
    register(settings, demo_repo)
    first = _finished_run(settings, services, [({T: "failed", U: "passed"}, [T]), ({T: "failed", U: "passed"}, [T])])
    dispatch_pending(services, first)
    rows = _rows(settings)
    assert set(rows) == {T}  # a first-try pass of an unrecorded test records nothing
    assert (rows[T].state, rows[T].flaky_count, rows[T].runs) == ("suspected", 2, [first])
    # Dated when the run ended, not when the dispatcher got to it.
    assert as_utc(rows[T].last_flaky_at) == as_utc(rows[T].first_seen_at) == ENDED
    assert dispatch_pending(services, first).events == 0 and _rows(settings)[T].flaky_count == 2

    second = _finished_run(settings, services, [({T: "failed"}, [T])])
    dispatch_pending(services, second)
    rows = _rows(settings)
    assert (rows[T].state, rows[T].flaky_count, rows[T].runs, rows[T].state_reason) == ("quarantined", 3, [first, second], "flaky in 2 runs")
    with session_scope(settings.db_url) as s:
        told = s.scalars(select(Event).where(Event.run_id == second, Event.type.like("flaky.%"))).all()
        assert [(e.type, e.payload) for e in told] == [("flaky.quarantined", {"test": T, "reason": "flaky in 2 runs"})]
        project = s.scalars(select(Project)).one()
        assert quarantined_tests(s, project.id) == frozenset({T})
        listed = project_flaky_tests(s, project)
        assert [(t["test"], t["state"], t["runs"]) for t in listed] == [(T, "quarantined", [first, second])]
        assert project_flaky_tests(s, project, "cleared") == []


@pytest.mark.postgres
def test_two_runs_of_a_project_ending_together_both_count(pg_url: str, tmp_path: Path, demo_repo: Path) -> None:
    """Both folds insert the same new test: the project's row lock makes the second wait for the
    first and update its row (without it, one of them fails on the unique key and its run's flakes
    are lost)."""
    settings, services = on_postgres(pg_url, tmp_path, demo_repo)
    runs = [_finished_run(settings, services, [({T: "failed"}, [T])]) for _ in range(2)]

    def fold(run_id: str):  # type: ignore[no-untyped-def]
        def step(meet) -> None:  # type: ignore[no-untyped-def]
            with session_scope(pg_url) as s:
                run = s.get(Run, run_id)
                assert run is not None
                meet()
                record_run(s, run, FlakinessConfig())
        return step

    assert at_once(fold(runs[0]), fold(runs[1])) == []
    row = _rows(settings)[T]
    assert (row.state, row.flaky_count, sorted(row.runs)) == ("quarantined", 2, sorted(runs))


def test_ageing_clears_and_forgets_records_per_project(settings: Settings, demo_repo: Path) -> None:
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with session_scope(settings.db_url) as s:
        project = Project(name="demo", repo_path=str(demo_repo), base_branch="main")
        s.add(project)
        s.flush()
        for test_id, state, days_ago in ((T, "quarantined", 31), (U, "suspected", 3), ("tests/t.py::gone", "cleared", 40)):
            when = now - timedelta(days=days_ago)
            s.add(FlakyTest(project_id=project.id, test_id=test_id, state=state, state_reason="", flaky_count=1, runs=["r"],
                            passes_since_flaky=0, first_seen_at=when, last_flaky_at=when, state_changed_at=when))
    report = age_records(settings.db_url, FlakinessConfig(clear_after_days=30, forget_after_days=30), now=now)
    assert report.as_dict() == {"cleared": [f"demo: {T}"], "forgotten": ["demo: tests/t.py::gone"], "kept": 2}
    rows = _rows(settings)
    assert set(rows) == {T, U}
    assert (rows[T].state, rows[T].runs, rows[T].state_reason) == ("cleared", [], "not flaky for 30 days")
    assert rows[U].state == "suspected"
    assert age_records(settings.db_url, FlakinessConfig(), now=now).as_dict() == {"cleared": [], "forgotten": [], "kept": 2}


def _project(s: Any) -> Project:
    return s.scalars(select(Project)).one()


def test_an_operator_quarantines_and_clears_a_test_by_hand(settings: Settings, demo_repo: Path) -> None:
    services, _ = make_services(settings, lambda req: "")
    register(settings, demo_repo)
    when = datetime(2026, 11, 3, 9, 0, tzinfo=timezone.utc)
    with session_scope(settings.db_url) as s:
        view = set_record_by_hand(s, _project(s), T, "quarantined", "flakes on the CI box", now=when)
    assert view == {"test": T, "state": "quarantined", "reason": "by hand: flakes on the CI box", "flaky_count": 0, "runs": [],
                    "passes_since_flaky": 0, "first_seen_at": when.isoformat(), "last_flaky_at": when.isoformat(),
                    "state_changed_at": when.isoformat()}
    with session_scope(settings.db_url) as s:
        assert quarantined_tests(s, _project(s).id) == frozenset({T})
        assert project_flaky_tests(s, _project(s)) == [view]
        with pytest.raises(NotFound, match=f"test '{U}' has no known-flaky record to clear in project 'demo'"):
            set_record_by_hand(s, _project(s), U, "cleared")
        with pytest.raises(InvalidRequest):
            set_record_by_hand(s, _project(s), T, "suspected")
    assert set(_rows(settings)) == {T}

    # A run that flakes it keeps it quarantined, with the evidence; clearing by hand drops the runs.
    run_id = _finished_run(settings, services, [({T: "failed"}, [T])])
    dispatch_pending(services, run_id)
    row = _rows(settings)[T]
    assert (row.state, row.state_reason, row.flaky_count, row.runs) == ("quarantined", "by hand: flakes on the CI box", 1, [run_id])
    with session_scope(settings.db_url) as s:
        events = len(s.scalars(select(Event)).all())
        view = set_record_by_hand(s, _project(s), T, "cleared", "", now=when + timedelta(days=1))
    with session_scope(settings.db_url) as s:
        assert len(s.scalars(select(Event)).all()) == events  # no run to tell, so no event
    assert (view["state"], view["reason"], view["runs"], view["flaky_count"]) == ("cleared", "by hand", [], 1)
    assert view["state_changed_at"] == (when + timedelta(days=1)).isoformat()
    with session_scope(settings.db_url) as s:
        assert quarantined_tests(s, _project(s).id) == frozenset()
    # The normal rules still apply: it flakes again, and is a suspect.
    again = _finished_run(settings, services, [({T: "failed"}, [T])])
    dispatch_pending(services, again)
    row = _rows(settings)[T]
    assert (row.state, row.runs, row.state_reason) == ("suspected", [again], "flaky again after it was cleared")


@pytest.mark.postgres
def test_a_hand_quarantine_and_a_run_ending_together_both_count(pg_url: str, tmp_path: Path, demo_repo: Path) -> None:
    """Both insert the same new test: the project's row lock makes one wait for the other and update
    its row (without it, one of them fails on the unique key)."""
    settings, services = on_postgres(pg_url, tmp_path, demo_repo)
    run_id = _finished_run(settings, services, [({T: "failed"}, [T])])

    def fold(meet) -> None:  # type: ignore[no-untyped-def]
        with session_scope(pg_url) as s:
            run = s.get(Run, run_id)
            assert run is not None
            meet()
            record_run(s, run, FlakinessConfig())

    def by_hand(meet) -> None:  # type: ignore[no-untyped-def]
        with session_scope(pg_url) as s:
            project = _project(s)
            meet()
            set_record_by_hand(s, project, T, "quarantined", "known")

    assert at_once(fold, by_hand) == []
    row = _rows(settings)[T]
    assert (row.state, row.flaky_count, row.runs) == ("quarantined", 1, [run_id])
