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


def test_quarantining_by_hand_makes_a_record_for_an_unrecorded_test() -> None:
    rec = fl.set_by_hand(None, T, "quarantined", "  flakes on the CI box \n", NOW)
    assert rec == fl.FlakyRecord(test_id=T, state="quarantined", flaky_count=0, runs=(), passes_since_flaky=0, first_seen_at=NOW,
                                 last_flaky_at=NOW, state_changed_at=NOW, state_reason="by hand: flakes on the CI box")
    assert fl.set_by_hand(None, T, "quarantined", "", NOW).state_reason == "by hand"


def test_quarantining_by_hand_keeps_the_evidence_and_restarts_the_clearing_clocks() -> None:
    cfg = fl.FlakinessConfig(clear_after_passes=3, clear_after_days=30)
    rec = fl.fold_run({}, "r1", [flaky(T), flaky(passed=(T,)), flaky(passed=(T,))], NOW, cfg).records[T]
    assert (rec.state, rec.passes_since_flaky) == ("suspected", 2)
    later = NOW + timedelta(days=29)
    by_hand = fl.set_by_hand(rec, T, "quarantined", "known bad", later)
    assert (by_hand.state, by_hand.state_reason, by_hand.state_changed_at) == ("quarantined", "by hand: known bad", later)
    assert (by_hand.flaky_count, by_hand.runs, by_hand.first_seen_at, by_hand.last_flaky_at) == (1, ("r1",), NOW, NOW)
    assert by_hand.passes_since_flaky == 0  # one more pass would have cleared it otherwise
    # The normal rules still apply, counted from the hand quarantine.
    assert fl.fold_run({T: by_hand}, "r2", [flaky(passed=(T,))], later, cfg).records[T].state == "quarantined"
    assert fl.fold_run({T: by_hand}, "r2", [flaky(passed=(T,))] * 3, later, cfg).records[T].state == "cleared"
    assert fl.age(by_hand, NOW + timedelta(days=30), cfg) == by_hand  # 30 days after the flake, 1 after the hand
    aged = fl.age(by_hand, later + timedelta(days=30), cfg)
    assert aged is not None and (aged.state, aged.state_reason) == ("cleared", "not flaky for 30 days")


def test_clearing_by_hand_resets_what_automatic_clearing_resets() -> None:
    cfg = fl.FlakinessConfig(quarantine_after_runs=2)
    records = fl.fold_run({}, "r1", [flaky(T)], NOW, cfg).records
    rec = fl.fold_run(records, "r2", [flaky(T), flaky(passed=(T,))], NOW, cfg).records[T]
    assert (rec.state, rec.runs, rec.passes_since_flaky) == ("quarantined", ("r1", "r2"), 1)
    later = NOW + timedelta(hours=2)
    cleared = fl.set_by_hand(rec, T, "cleared", "fixed in #123", later)
    assert cleared == fl.FlakyRecord(test_id=T, state="cleared", flaky_count=2, runs=(), passes_since_flaky=1, first_seen_at=NOW,
                                     last_flaky_at=NOW, state_changed_at=later, state_reason="by hand: fixed in #123")
    # Flaking again makes it a suspect that needs quarantine_after_runs runs anew, as after automatic clearing.
    again = fl.fold_run({T: cleared}, "r3", [flaky(T)], later, cfg)
    assert (again.records[T].state, again.records[T].runs) == ("suspected", ("r3",))
    assert fl.age(cleared, later + timedelta(days=cfg.forget_after_days), cfg) is None


def test_by_hand_refusals() -> None:
    from autopack.errors import InvalidRequest, NotFound

    with pytest.raises(NotFound, match="no known-flaky record to clear"):
        fl.set_by_hand(None, T, "cleared", "", NOW)
    for state in ("suspected", "flaky", ""):
        with pytest.raises(InvalidRequest) as bad:
            fl.set_by_hand(None, T, state, "", NOW)
        assert bad.value.field == "state"
    with pytest.raises(InvalidRequest) as bad:
        fl.set_by_hand(None, T, "quarantined", "x" * (fl.REASON_MAX + 1), NOW)
    assert bad.value.field == "reason"
    with pytest.raises(InvalidRequest) as bad:
        fl.set_by_hand(None, " ", "quarantined", "", NOW)
    assert bad.value.field == "test"
    with pytest.raises(ValueError, match="not of"):
        fl.set_by_hand(fl.FlakyRecord(test_id=U), T, "quarantined", "", NOW)
