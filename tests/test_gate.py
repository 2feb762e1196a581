"""The gate decision, on small data: every outcome combination of one test, then mixes."""

from __future__ import annotations

import itertools

import pytest

from autopack.gate import (
    GateInput,
    acceptance_matches,
    evaluate,
    newly_failing,
    quarantined_to_rerun,
    tests_to_rerun,
)

T = "tests/test_a.py::test_x"
STATES = (None, "passed", "failed", "error", "skipped")  # None: the test is absent


def _map(value: str | None) -> dict[str, str]:
    return {} if value is None else {T: value}


def _gate(
    baseline: dict[str, str],
    candidate: dict[str, str],
    rerun: dict[str, str] | None = None,
    acceptance: tuple[str, ...] = (),
    missing: tuple[str, ...] = (),
    killed: str | None = None,
) -> GateInput:
    return GateInput(baseline, candidate, rerun, acceptance, missing, killed)


@pytest.mark.parametrize(("before", "after"), list(itertools.product(STATES, STATES)))
def test_newly_failing_single_test(before: str | None, after: str | None) -> None:
    regressed = before == "passed" and after != "passed"
    assert newly_failing(_map(before), _map(after)) == ([T] if regressed else [])
    # Only tests that ran and failed are worth a re-run; vanished and skipped ones are not.
    assert tests_to_rerun(_map(before), _map(after)) == ([T] if regressed and after in ("failed", "error") else [])


@pytest.mark.parametrize(
    ("before", "after", "rerun"),
    list(itertools.product(STATES, STATES, (None, "passed", "failed", "error"))),
)
def test_evaluate_single_test(before: str | None, after: str | None, rerun: str | None) -> None:
    verdict = evaluate(_gate(_map(before), _map(after), rerun=_map(rerun) if rerun else None))
    newly = before == "passed" and after != "passed"
    flaky = newly and after in ("failed", "error") and rerun == "passed"
    assert verdict.flaky == ((T,) if flaky else ())
    assert verdict.regressions == ((T,) if newly and not flaky else ())
    assert verdict.passed is (not newly or flaky)
    assert verdict.acceptance_failed == verdict.acceptance_missing == verdict.missing_deliverables == ()
    assert "\n" not in verdict.reason and verdict.reason.startswith("passed" if verdict.passed else "failed")


@pytest.mark.parametrize("after", STATES)
def test_single_acceptance_test_must_pass(after: str | None) -> None:
    verdict = evaluate(_gate({}, _map(after), acceptance=(T,)))
    assert verdict.passed is (after == "passed")
    assert verdict.acceptance_missing == ((T,) if after is None else ())
    assert verdict.acceptance_failed == ((T,) if after not in (None, "passed") else ())


def test_pre_existing_failures_do_not_block() -> None:
    baseline = {"a.py::t1": "failed", "a.py::t2": "error", "a.py::t3": "passed"}
    candidate = {"a.py::t1": "failed", "a.py::t2": "error", "a.py::t3": "passed", "a.py::t4": "passed"}
    verdict = evaluate(_gate(baseline, candidate))
    assert verdict.passed and verdict.regressions == ()
    assert "2 failing test(s) not passing at baseline" in verdict.reason


def test_removed_passing_test_is_a_regression_and_not_rerun() -> None:
    baseline = {"a.py::t1": "passed", "a.py::t2": "passed"}
    candidate = {"a.py::t1": "passed"}
    assert tests_to_rerun(baseline, candidate) == []
    verdict = evaluate(_gate(baseline, candidate, rerun={"a.py::t2": "passed"}))  # a bogus re-run changes nothing
    assert not verdict.passed
    assert verdict.regressions == ("a.py::t2",) and verdict.flaky == ()
    assert verdict.reason == "failed: 1 regression(s): a.py::t2"


def test_flaky_and_regression_together() -> None:
    baseline = {"a.py::t1": "passed", "a.py::t2": "passed", "a.py::t3": "passed"}
    candidate = {"a.py::t1": "failed", "a.py::t2": "error", "a.py::t3": "passed"}
    assert tests_to_rerun(baseline, candidate) == ["a.py::t1", "a.py::t2"]
    verdict = evaluate(_gate(baseline, candidate, rerun={"a.py::t1": "passed", "a.py::t2": "error"}))
    assert verdict.flaky == ("a.py::t1",)
    assert verdict.regressions == ("a.py::t2",)
    assert not verdict.passed
    ok = evaluate(_gate(baseline, candidate, rerun={"a.py::t1": "passed", "a.py::t2": "passed"}))
    assert ok.passed and ok.flaky == ("a.py::t1", "a.py::t2")
    assert "2 flaky" in ok.reason


@pytest.mark.parametrize(
    ("entry", "test_id", "expected"),
    [
        ("tests/test_x.py", "tests/test_x.py::test_a", True),
        ("tests/test_x.py", "tests/test_x.py::TestC::test_a[1]", True),
        ("./tests/test_x.py", "tests/test_x.py::test_a", True),
        ("tests/test_x.py", "tests/test_x.pyc::test_a", False),
        ("tests/test_x.py", "tests/test_x_more.py::test_a", False),
        ("tests/test_x", "tests/test_x.py::test_a", False),
        ("tests", "tests/test_x.py::test_a", True),
        ("tests/", "tests/unit/test_x.py::test_a", True),
        ("tests", "tests_other/test_x.py::test_a", False),
        ("tests/test_x.py::test_a", "tests/test_x.py::test_a", True),
        ("tests/test_x.py::test_a", "tests/test_x.py::test_a[2-b]", True),
        ("tests/test_x.py::test_a", "tests/test_x.py::test_ab", False),
        ("tests/test_x.py::TestC", "tests/test_x.py::TestC::test_a", True),
        ("tests/test_x.py::TestC", "tests/test_x.py::TestCD::test_a", False),
        ("tests/test_x.py::test_a[1]", "tests/test_x.py::test_a[10]", False),
        ("", "tests/test_x.py::test_a", False),
    ],
)
def test_acceptance_matches(entry: str, test_id: str, expected: bool) -> None:
    assert acceptance_matches(entry, test_id) is expected


def test_acceptance_by_file_needs_every_matched_test_to_pass() -> None:
    candidate = {
        "tests/test_new.py::test_a": "passed",
        "tests/test_new.py::test_b[1]": "passed",
        "tests/test_new.py::test_b[2]": "skipped",
        "tests/test_other.py::test_c": "failed",
    }
    verdict = evaluate(_gate({}, candidate, acceptance=("tests/test_new.py", "tests/test_gone.py")))
    assert not verdict.passed
    assert verdict.acceptance_failed == ("tests/test_new.py::test_b[2]",)  # skipped is not passing
    assert verdict.acceptance_missing == ("tests/test_gone.py",)
    assert verdict.regressions == ()  # test_other was not passing at baseline
    candidate["tests/test_new.py::test_b[2]"] = "passed"
    assert evaluate(_gate({}, candidate, acceptance=("tests/test_new.py",))).passed


def test_flaky_acceptance_test_counts_as_passing() -> None:
    verdict = evaluate(_gate({T: "passed"}, {T: "failed"}, rerun={T: "passed"}, acceptance=(T,)))
    assert verdict.passed and verdict.flaky == (T,) and verdict.acceptance_failed == ()


def test_missing_deliverables_block() -> None:
    verdict = evaluate(_gate({T: "passed"}, {T: "passed"}, missing=("src/new.py", "docs/x.md")))
    assert not verdict.passed
    assert verdict.missing_deliverables == ("src/new.py", "docs/x.md")
    assert verdict.reason == "failed: missing deliverables: src/new.py, docs/x.md"


@pytest.mark.parametrize("killed", ["timeout", "output", "signal:SIGKILL"])
def test_killed_run_blocks_even_when_all_passed(killed: str) -> None:
    verdict = evaluate(_gate({T: "passed"}, {T: "passed"}, killed=killed))
    assert not verdict.passed
    assert verdict.reason == f"failed: test run killed ({killed})"


def test_every_problem_in_one_line() -> None:
    baseline = {f"a.py::t{i}": "passed" for i in range(5)}
    verdict = evaluate(_gate(baseline, {}, acceptance=("b.py",), missing=("x.py",), killed="timeout"))
    assert not verdict.passed
    assert len(verdict.regressions) == 5
    assert verdict.reason == (
        "failed: test run killed (timeout); 5 regression(s): a.py::t0, a.py::t1, a.py::t2 (+2 more); "
        "acceptance entries matching no test: b.py; missing deliverables: x.py"
    )


def test_empty_everything_passes() -> None:
    verdict = evaluate(_gate({}, {}))
    assert verdict.passed and verdict.reason == "passed: 0/0 tests passed, no regressions"


U = "tests/test_a.py::test_y"


def test_a_quarantined_test_passing_on_a_later_rerun_is_known_flaky() -> None:
    base, cand = {T: "passed", U: "passed"}, {T: "failed", U: "failed"}
    first, later = {T: "failed", U: "failed"}, {T: "passed", U: "passed"}
    verdict = evaluate(GateInput(base, cand, first, (), (), None, quarantined=frozenset({T}), extra_reruns=(later,)))
    # Later re-runs count for the quarantined test only: U failed its one re-run and is a regression.
    assert verdict.flaky == (T,) and verdict.known_flaky == (T,) and verdict.regressions == (U,)
    assert not verdict.passed
    ok = evaluate(GateInput({T: "passed"}, {T: "failed"}, first, (), (), None, quarantined=frozenset({T}), extra_reruns=(first, later)))
    assert ok.passed and ok.flaky == ok.known_flaky == (T,)
    assert "1 flaky (passed on re-run: tests/test_a.py::test_x), 1 of them quarantined" in ok.reason


def test_a_quarantined_test_failing_every_rerun_is_still_a_regression() -> None:
    failing = {T: "failed"}
    verdict = evaluate(GateInput({T: "passed"}, failing, failing, (), (), None, quarantined=frozenset({T}), extra_reruns=(failing, failing)))
    assert not verdict.passed and verdict.regressions == (T,) and verdict.known_flaky == ()


def test_a_test_flaky_on_its_first_rerun_is_known_flaky_when_quarantined() -> None:
    verdict = evaluate(GateInput({T: "passed", U: "passed"}, {T: "failed", U: "error"}, {T: "passed", U: "passed"}, (), (), None,
                                 quarantined=frozenset({U})))
    assert verdict.passed and verdict.flaky == (T, U) and verdict.known_flaky == (U,)


def test_quarantined_to_rerun_picks_quarantined_tests_no_rerun_passed() -> None:
    rerun_ids = [T, U, "tests/test_b.py::test_z"]
    q = {T, U}
    assert quarantined_to_rerun(q, rerun_ids, [{T: "failed", U: "passed"}]) == [T]
    assert quarantined_to_rerun(q, rerun_ids, [{T: "failed", U: "failed"}, {T: "passed"}]) == [U]
    assert quarantined_to_rerun(q, rerun_ids, [{T: "error"}]) == [T, U]  # a test missing from a re-run's report did not pass
    assert quarantined_to_rerun(set(), rerun_ids, [{}]) == []
    assert quarantined_to_rerun(q, [], [{}]) == []
