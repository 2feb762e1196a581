from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.errors import DoctorVerdictError
from autopack.governance.classify import FailureClass
from autopack.governance.doctor import (
    MAX_HINT_CHARS,
    DoctorAction,
    DoctorBudget,
    DoctorDecision,
    FailureRecord,
    can_call,
    deterministic_decision,
    needs_escalation,
)
from autopack.governance.doctor_prompt import parse_doctor_verdict, render_doctor_prompt
from autopack.prompts import PromptLibrary

F = FailureClass
A = DoctorAction
PROMPTS = PromptLibrary(Path(__file__).resolve().parents[2] / "prompts")


def h(*classes: FailureClass, msg: str = "boom") -> list[FailureRecord]:
    return [FailureRecord(c, f"{msg} {i}") for i, c in enumerate(classes)]


def test_empty_history_is_an_error() -> None:
    with pytest.raises(ValueError):
        deterministic_decision([])


def test_first_test_failure_retries_with_the_failure_as_hint() -> None:
    d = deterministic_decision([FailureRecord(F.TEST_FAILURE, "AssertionError: expected 3, got 4")])
    assert d is not None
    assert d.action is A.RETRY_WITH_FIX and d.burns_attempt and d.source == "rules" and d.confidence == 1.0
    assert "AssertionError: expected 3, got 4" in d.hint


@pytest.mark.parametrize("cls", [F.TEST_FAILURE, F.REGRESSION, F.EDIT_NOT_APPLIED, F.AUDITOR_REJECTION, F.TIMEOUT,
                                 F.SANDBOX_RESOURCE_LIMIT, F.SCOPE_VIOLATION])
def test_first_of_each_kind_retries_even_after_other_kinds(cls: FailureClass) -> None:
    other = F.TEST_FAILURE if cls is not F.TEST_FAILURE else F.REGRESSION
    d = deterministic_decision(h(other, other, cls))
    assert d is not None and d.action is A.RETRY_WITH_FIX and d.hint


@pytest.mark.parametrize("cls", [F.TEST_FAILURE, F.REGRESSION, F.EDIT_NOT_APPLIED, F.AUDITOR_REJECTION, F.TIMEOUT])
def test_repeated_failure_goes_to_the_model(cls: FailureClass) -> None:
    assert deterministic_decision(h(cls, cls)) is None
    assert deterministic_decision(h(cls, F.TEST_FAILURE if cls is not F.TEST_FAILURE else F.TIMEOUT, cls)) is None


def test_scope_violation_twice_replans_once() -> None:
    d = deterministic_decision(h(F.SCOPE_VIOLATION, F.TEST_FAILURE, F.SCOPE_VIOLATION))
    assert d is not None and d.action is A.REPLAN and "2" in d.reason
    assert deterministic_decision(h(F.SCOPE_VIOLATION, F.SCOPE_VIOLATION), already_replanned=True) is None


@pytest.mark.parametrize("cls", [F.INFRASTRUCTURE, F.PROVIDER_ERROR])
def test_infrastructure_retries_without_burning(cls: FailureClass) -> None:
    for history in (h(cls), h(cls, cls, cls), h(F.TEST_FAILURE, F.TEST_FAILURE, cls)):
        d = deterministic_decision(history)
        assert d is not None and d.action is A.RETRY_WITH_FIX and d.burns_attempt is False and d.hint == ""


def test_budget_is_fatal() -> None:
    d = deterministic_decision(h(F.TEST_FAILURE, F.BUDGET))
    assert d is not None and d.action is A.MARK_FATAL


def test_hint_is_bounded() -> None:
    d = deterministic_decision([FailureRecord(F.TEST_FAILURE, "x" * 10_000)])
    assert d is not None and len(d.hint) == MAX_HINT_CHARS


def test_decision_confidence_is_validated() -> None:
    with pytest.raises(ValueError):
        DoctorDecision(A.SKIP_PHASE, "", 1.5, "r")


def test_needs_escalation() -> None:
    unsure = DoctorDecision(A.SKIP_PHASE, "", 0.4, "r", source="model")
    sure = DoctorDecision(A.SKIP_PHASE, "", 0.9, "r", source="model")
    assert needs_escalation(unsure, 0.7)
    assert not needs_escalation(sure, 0.7)
    assert not needs_escalation(DoctorDecision(A.SKIP_PHASE, "", 0.7, "r", source="model"), 0.7)  # at threshold: fine
    assert not needs_escalation(DoctorDecision(A.SKIP_PHASE, "", 0.1, "r", source="rules"), 0.7)
    with pytest.raises(ValueError):
        needs_escalation(sure, 1.2)


@pytest.mark.parametrize(("phase", "run", "ok"), [(0, 0, True), (1, 5, True), (2, 5, False), (1, 10, False), (2, 10, False)])
def test_can_call(phase: int, run: int, ok: bool) -> None:
    assert can_call(phase, run, DoctorBudget(per_phase=2, per_run=10)) is ok


def test_zero_budget_never_calls_and_negative_is_refused() -> None:
    assert not can_call(0, 0, DoctorBudget(0, 10))
    with pytest.raises(ValueError):
        DoctorBudget(-1, 3)


def test_parse_doctor_verdict() -> None:
    text = 'Thinking…\n```json\n{"action": "retry_with_fix", "hint": " use a dict ", "confidence": 0.8, "reason": "typo"}\n```'
    d = parse_doctor_verdict(text)
    assert d == DoctorDecision(A.RETRY_WITH_FIX, "use a dict", 0.8, "typo", source="model")
    assert parse_doctor_verdict('{"action": "skip_phase", "confidence": 1}').action is A.SKIP_PHASE
    for action in A:
        body = {"action": action.value, "hint": "h", "confidence": 0, "reason": ""}
        assert parse_doctor_verdict(json.dumps(body)).action is action


@pytest.mark.parametrize("text", [
    "no json here",
    "{not json}",
    '{"action": "panic", "confidence": 0.5}',
    '{"hint": "x", "confidence": 0.5}',
    '{"action": "skip_phase"}',
    '{"action": "skip_phase", "confidence": 1.01}',
    '{"action": "skip_phase", "confidence": -0.1}',
    '{"action": "skip_phase", "confidence": "high"}',
    '{"action": "skip_phase", "confidence": true}',
    '{"action": "retry_with_fix", "confidence": 0.9}',
    '{"action": "retry_with_fix", "hint": "  ", "confidence": 0.9}',
    '{"action": "skip_phase", "confidence": 0.9, "hint": 3}',
])
def test_parse_doctor_verdict_refuses_malformed(text: str) -> None:
    with pytest.raises(DoctorVerdictError):
        parse_doctor_verdict(text)


def test_doctor_verdict_error_is_a_value_error() -> None:
    assert issubclass(DoctorVerdictError, ValueError)


def test_render_doctor_prompt() -> None:
    history = [FailureRecord(F.TEST_FAILURE, "failed at /tmp/run-1/x.py:12"), FailureRecord(F.REGRESSION, "t::a broke at /tmp/x.py")]
    system, user = render_doctor_prompt(PROMPTS, phase_id="p1", category="feature", goal="  Add x  ", scope=["src/x.py", "tests/"],
                                        history=history, attempts_used=2, max_attempts=3, already_replanned=False)
    assert '"action"' in system and "retry_with_fix" in system and "rollback_run" in system
    assert "# Phase p1 (feature)" in user and "Goal: Add x\n" in user and "src/x.py, tests/" in user
    assert "2 of 3" in user and "re-planned: no" in user
    assert "1. test_failure\nfailed at <path>:<n>" in user  # older failures normalised
    assert "2. regression (latest)\nt::a broke at /tmp/x.py" in user  # the latest verbatim
    assert "$" not in user


def test_render_doctor_prompt_bounds_messages() -> None:
    history = [FailureRecord(F.TEST_FAILURE, "a" * 5000), FailureRecord(F.TEST_FAILURE, "b" * 9000)]
    _, user = render_doctor_prompt(PROMPTS, phase_id="p", category="c", goal="g", scope=[], history=history,
                                   attempts_used=1, max_attempts=3, already_replanned=True)
    assert "a" * 1500 + " …" in user and "a" * 1501 not in user
    assert "b" * 3000 + " …" in user and "b" * 3001 not in user
    assert "Scope: (none)" in user and "re-planned: yes" in user
