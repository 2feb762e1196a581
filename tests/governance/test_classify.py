from __future__ import annotations

import pytest

from autopack.governance.classify import (
    ENGINE_CLASSES,
    AttemptFacts,
    FailureClass,
    NotAFailure,
    UnknownFailureClass,
    burns_attempt,
    classify_failure,
)

F = FailureClass


@pytest.mark.parametrize(("recorded", "error", "expected"), [
    ("budget", "", F.BUDGET),
    ("provider_error", "anthropic: overloaded (HTTP 529)", F.PROVIDER_ERROR),
    ("worker_lost", "", F.INFRASTRUCTURE),
    ("infrastructure", "", F.INFRASTRUCTURE),
    ("edit_invalid", "no edit block", F.EDIT_NOT_APPLIED),
    ("truncated", "", F.EDIT_NOT_APPLIED),
    ("edit_refused", "src/x.py: outside scope", F.SCOPE_VIOLATION),
    ("edit_refused", "apply failed: git commit failed", F.EDIT_NOT_APPLIED),
    ("edit_refused", "Apply failed: whatever", F.EDIT_NOT_APPLIED),
    ("scope_violation", "", F.SCOPE_VIOLATION),
])
def test_build_stage_classes_come_from_the_recorded_class(recorded: str, error: str, expected: FailureClass) -> None:
    # a build-stage class wins even when gate facts are present (a stale gate must not mask it)
    facts = AttemptFacts(failure_class=recorded, gate={"passed": False, "killed": "timeout"}, error=error)
    assert classify_failure(facts) is expected


@pytest.mark.parametrize(("killed", "expected"), [
    ("timeout", F.TIMEOUT),
    ("output", F.SANDBOX_RESOURCE_LIMIT),
    ("memory", F.SANDBOX_RESOURCE_LIMIT),
    ("signal:SIGXCPU", F.SANDBOX_RESOURCE_LIMIT),
    ("signal:SIGXFSZ", F.SANDBOX_RESOURCE_LIMIT),
    ("signal:SIGKILL", F.SANDBOX_RESOURCE_LIMIT),
    ("signal:SIGTERM", F.INFRASTRUCTURE),
    ("signal:SIGHUP", F.INFRASTRUCTURE),
    ("signal:SIGSEGV", F.TEST_FAILURE),
    ("signal:SIGABRT", F.TEST_FAILURE),
])
def test_kills(killed: str, expected: FailureClass) -> None:
    facts = AttemptFacts(failure_class="test_failure", gate={"passed": False, "killed": killed, "regressions": ["t::a"]})
    assert classify_failure(facts) is expected


def test_a_candidate_run_without_a_report_is_a_failed_test_run() -> None:
    """The baseline wrote a report: a candidate whose run wrote none most likely broke the test
    command, and uses an attempt (as infrastructure it was rebuilt up to the health budget)."""
    facts = AttemptFacts(failure_class="test_failure", gate={"passed": False, "error": "the test command wrote no JUnit report"})
    assert classify_failure(facts) is F.TEST_FAILURE


def test_regression_before_test_failure() -> None:
    assert classify_failure(AttemptFacts("test_failure", {"passed": False, "regressions": ["t::a"]})) is F.REGRESSION
    assert classify_failure(AttemptFacts("regression", {"passed": False, "regressions": []})) is F.REGRESSION
    assert classify_failure(AttemptFacts(None, {"passed": False, "regressions": ["t::a"]})) is F.REGRESSION


def test_test_failure() -> None:
    assert classify_failure(AttemptFacts("test_failure", {"passed": False})) is F.TEST_FAILURE
    assert classify_failure(AttemptFacts(None, {"passed": False})) is F.TEST_FAILURE
    assert classify_failure(AttemptFacts("test_failure")) is F.TEST_FAILURE


def test_gate_failure_wins_over_audit_rejection() -> None:
    assert classify_failure(AttemptFacts(None, {"passed": False}, audit_approved=False)) is F.TEST_FAILURE


def test_auditor_rejection() -> None:
    assert classify_failure(AttemptFacts(None, {"passed": True}, audit_approved=False)) is F.AUDITOR_REJECTION
    assert classify_failure(AttemptFacts("auditor_rejection", {"passed": True})) is F.AUDITOR_REJECTION
    # a required audit that produced no approval is a rejection, as autopack.decide treats it
    assert classify_failure(AttemptFacts(None, {"passed": True}, audit_approved=None)) is F.AUDITOR_REJECTION


def test_advisory_rejection_is_not_a_failure() -> None:
    with pytest.raises(NotAFailure):
        classify_failure(AttemptFacts(None, {"passed": True}, audit_approved=False, audit_required=False))
    with pytest.raises(NotAFailure):
        classify_failure(AttemptFacts(None, {"passed": True}, audit_approved=True))
    with pytest.raises(NotAFailure):
        classify_failure(AttemptFacts())


def test_unknown_recorded_class_is_an_error_not_a_silent_guess() -> None:
    with pytest.raises(UnknownFailureClass, match="mystery"):
        classify_failure(AttemptFacts("mystery"))


def test_every_class_maps_to_itself() -> None:
    for c in FailureClass:
        assert ENGINE_CLASSES[c.value] is c


def test_burns_attempt() -> None:
    assert {c for c in FailureClass if not burns_attempt(c)} == {F.PROVIDER_ERROR, F.INFRASTRUCTURE}
