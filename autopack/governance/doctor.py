"""The Doctor's decision core: deterministic rules for the obvious failures, when the model Doctor
must decide instead, when its answer needs the strong model, and its call budget. Pure.

Rules (on the latest failure of the phase's history, in order):

- ``budget`` → ``mark_fatal``: nothing more can be spent.
- ``provider_error`` / ``infrastructure`` → ``retry_with_fix`` without a hint and without burning an
  attempt (``burns_attempt=False``): the change was not at fault.
- ``scope_violation`` for the second time → ``replan`` (the goal pulls the Builder outside its scope);
  once the phase was already re-planned the model Doctor decides.
- the first failure of any other class → ``retry_with_fix`` with the failure as the hint.
- anything else (a repeated failure) → ``None``: the model Doctor decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from autopack.governance.classify import FailureClass, burns_attempt

MAX_HINT_CHARS = 2000


class DoctorAction(StrEnum):
    RETRY_WITH_FIX = "retry_with_fix"
    REPLAN = "replan"
    SKIP_PHASE = "skip_phase"
    MARK_FATAL = "mark_fatal"
    ROLLBACK_RUN = "rollback_run"


@dataclass(frozen=True)
class FailureRecord:
    """One failed attempt of a phase: its class and its (raw) failure message."""

    cls: FailureClass
    message: str = ""


@dataclass(frozen=True)
class DoctorDecision:
    action: DoctorAction
    hint: str  # for the Builder's next attempt (retry_with_fix); may be empty otherwise
    confidence: float  # 0..1; rules are certain (1.0)
    reason: str
    source: Literal["rules", "model"] = "rules"
    burns_attempt: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} is not within 0..1")


_HINT_LEAD: dict[FailureClass, str] = {
    FailureClass.EDIT_NOT_APPLIED: "Your edits could not be applied. Quote the file's current text exactly:",
    FailureClass.SCOPE_VIOLATION: "Some edits were refused: change only the files in the phase's scope.",
    FailureClass.TEST_FAILURE: "The tests failed. Fix the cause:",
    FailureClass.REGRESSION: "A test that passed before your change now fails. Keep existing behaviour:",
    FailureClass.AUDITOR_REJECTION: "The Auditor rejected the change. Address its objections:",
    FailureClass.TIMEOUT: "The tests ran out of time: look for an endless loop or a blocking call.",
    FailureClass.SANDBOX_RESOURCE_LIMIT: "The tests hit a resource limit (CPU, memory, output or file size): "
                                         "look for runaway loops, output or allocations.",
}


def _hint(cls: FailureClass, message: str) -> str:
    lead = _HINT_LEAD.get(cls, "The previous attempt failed:")
    text = message.strip()
    return (f"{lead}\n{text}" if text else lead)[:MAX_HINT_CHARS]


def deterministic_decision(history: Sequence[FailureRecord], *, already_replanned: bool = False) -> DoctorDecision | None:
    """The rules' decision for the phase's failure ``history`` (oldest first), or None when the
    model Doctor should decide. Raises ``ValueError`` on an empty history."""
    if not history:
        raise ValueError("the Doctor needs at least one failure")
    last = history[-1]
    if last.cls is FailureClass.BUDGET:
        return DoctorDecision(DoctorAction.MARK_FATAL, "", 1.0, "the budget is spent: no further call fits")
    if not burns_attempt(last.cls):
        return DoctorDecision(DoctorAction.RETRY_WITH_FIX, "", 1.0,
                              f"{last.cls.value} is not the change's fault: retry without using an attempt",
                              burns_attempt=False)
    seen = sum(1 for f in history if f.cls is last.cls)
    if last.cls is FailureClass.SCOPE_VIOLATION and seen >= 2:
        if already_replanned:
            return None
        return DoctorDecision(DoctorAction.REPLAN, "", 1.0,
                              f"edits were refused for scope {seen} times: the goal needs a plan within the scope")
    if seen == 1:
        return DoctorDecision(DoctorAction.RETRY_WITH_FIX, _hint(last.cls, last.message), 1.0,
                              f"first {last.cls.value} of the phase: retry with the failure as a hint")
    return None


def needs_escalation(decision: DoctorDecision, threshold: float) -> bool:
    """Whether a (cheap) Doctor's decision is too unsure to act on, so the strong model is asked.
    Decisions from the rules are never escalated."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not within 0..1")
    return decision.source == "model" and decision.confidence < threshold


@dataclass(frozen=True)
class DoctorBudget:
    """How many Doctor calls (cheap and escalated alike) one phase and one run may make."""

    per_phase: int
    per_run: int

    def __post_init__(self) -> None:
        if self.per_phase < 0 or self.per_run < 0:
            raise ValueError("Doctor call limits cannot be negative")


def can_call(phase_calls: int, run_calls: int, budget: DoctorBudget) -> bool:
    """Whether one more Doctor call fits in the phase's and the run's limits."""
    return phase_calls < budget.per_phase and run_calls < budget.per_run
