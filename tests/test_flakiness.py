"""Known-flaky test records (autopack/flakiness.py): what an attempt's gate saw, folded run by run
into suspected, quarantined and cleared records, and aged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from autopack import flakiness as fl

T = "tests/test_a.py::test_x"
U = "tests/test_a.py::test_y"
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
CFG = fl.FlakinessConfig()


def flaky(*tests: str, passed: tuple[str, ...] = ()) -> fl.AttemptTests:
    return fl.AttemptTests(flaky=frozenset(tests), passed=frozenset(passed))


def test_attempt_tests_reads_the_gate_and_the_first_try_outcomes() -> None:
    seen = fl.attempt_tests({"outcomes": {T: "failed", U: "passed", "c": "skipped", "d": "passed"}}, {"flaky": [T]})
    assert seen == fl.AttemptTests(flaky=frozenset({T}), passed=frozenset({U, "d"}))
    assert fl.attempt_tests(None, None) == fl.AttemptTests(frozenset(), frozenset())
    # A test the gate calls flaky never counts as a first-try pass, whatever the report says.
    assert fl.attempt_tests({"outcomes": {T: "passed"}}, {"flaky": [T]}).passed == frozenset()


def test_one_flake_makes_a_suspect_and_a_second_run_quarantines_it() -> None:
    first = fl.fold_run({}, "r1", [flaky(T), flaky(T)], NOW, CFG)
    rec = first.records[T]
    assert (rec.state, rec.flaky_count, rec.runs, rec.first_seen_at, rec.last_flaky_at) == ("suspected", 2, ("r1",), NOW, NOW)
    assert first.changes == []  # two flakes in one run are one run
    later = NOW + timedelta(hours=1)
    second = fl.fold_run(first.records, "r2", [flaky(T)], later, CFG)
    rec = second.records[T]
    assert (rec.state, rec.flaky_count, rec.runs, rec.first_seen_at, rec.state_changed_at) == ("quarantined", 3, ("r1", "r2"), NOW, later)
    assert second.changes == [(T, "quarantined", "flaky in 2 runs")]
    # Folding the same run again adds flakes, not runs.
    assert fl.fold_run(first.records, "r1", [flaky(T)], later, CFG).records[T].state == "suspected"


def test_quarantine_threshold_is_configurable() -> None:
    cfg = fl.FlakinessConfig(quarantine_after_runs=1)
    assert fl.fold_run({}, "r1", [flaky(T)], NOW, cfg).changes == [(T, "quarantined", "flaky in 1 runs")]


def test_first_try_passes_count_only_for_recorded_tests_and_clear_after_enough() -> None:
    cfg = fl.FlakinessConfig(clear_after_passes=3)
    records = fl.fold_run({}, "r1", [flaky(T), flaky(T)], NOW, fl.FlakinessConfig(quarantine_after_runs=1)).records
    assert records[T].state == "quarantined"
    fold = fl.fold_run(records, "r2", [flaky(passed=(T, U)), flaky(passed=(T,))], NOW, cfg)
    assert set(fold.records) == {T} and fold.records[T].passes_since_flaky == 2 and fold.changes == []
    cleared = fl.fold_run(fold.records, "r3", [flaky(passed=(T,)), flaky(passed=(T,))], NOW, cfg)
    rec = cleared.records[T]
    assert (rec.state, rec.runs, rec.passes_since_flaky) == ("cleared", (), 3)
    assert cleared.changes == [(T, "cleared", "passed at the first try 3 times since its last flake")]
    # A flake resets the count; a cleared test that flakes again is a suspect, and needs the runs anew.
    again = fl.fold_run(cleared.records, "r4", [flaky(T)], NOW, fl.FlakinessConfig(quarantine_after_runs=2))
    rec = again.records[T]
    assert (rec.state, rec.runs, rec.passes_since_flaky, rec.flaky_count) == ("suspected", ("r4",), 0, 3)
    assert again.changes == [(T, "suspected", "flaky again after it was cleared")]


def test_a_flake_resets_the_passes_since_the_last_one() -> None:
    records = fl.fold_run({}, "r1", [flaky(T)], NOW, CFG).records
    fold = fl.fold_run(records, "r2", [flaky(passed=(T,)), flaky(passed=(T,)), flaky(T), flaky(passed=(T,))], NOW, CFG)
    assert fold.records[T].passes_since_flaky == 1 and fold.records[T].state == "quarantined"


def test_runs_kept_as_evidence_are_bounded() -> None:
    records: dict[str, fl.FlakyRecord] = {}
    for i in range(fl.RUNS_KEPT + 5):
        records.update(fl.fold_run(records, f"r{i}", [flaky(T)], NOW, CFG).records)
    assert records[T].runs == tuple(f"r{i}" for i in range(5, fl.RUNS_KEPT + 5)) and records[T].flaky_count == fl.RUNS_KEPT + 5


def test_age_clears_records_without_a_flake_and_forgets_long_cleared_ones() -> None:
    cfg = fl.FlakinessConfig(clear_after_days=30, forget_after_days=10)
    rec = fl.fold_run({}, "r1", [flaky(T)], NOW, cfg).records[T]
    assert fl.age(rec, NOW + timedelta(days=29), cfg) == rec
    later = NOW + timedelta(days=30)
    cleared = fl.age(rec, later, cfg)
    assert cleared is not None and (cleared.state, cleared.runs, cleared.state_changed_at) == ("cleared", (), later)
    assert cleared.state_reason == "not flaky for 30 days"
    assert fl.age(cleared, later + timedelta(days=9), cfg) == cleared
    assert fl.age(cleared, later + timedelta(days=10), cfg) is None


@pytest.mark.parametrize("bad", [{"quarantine_after_runs": 0}, {"quarantine_after_runs": fl.RUNS_KEPT + 1},
                                 {"quarantine_reruns": -1}, {"clear_after_days": 0}, {"unknown": 1}])
def test_config_refuses_bad_values(bad: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        fl.FlakinessConfig(**bad)
