"""The Doctor on a failed attempt: the failure is classified, the rules decide the obvious cases, and
the model Doctor (cheap first, the strong model when the cheap one is unsure) decides the rest within
its per-phase and per-run call budgets. The outcome is a plain record kept on the attempt."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autopack.db.models import Attempt
from autopack.errors import BudgetExceeded, DoctorVerdictError, ProviderError
from autopack.governance.classify import AttemptFacts, FailureClass, NotAFailure, UnknownFailureClass, classify_failure
from autopack.governance.doctor import (
    DoctorAction,
    DoctorBudget,
    DoctorDecision,
    FailureRecord,
    can_call,
    deterministic_decision,
    needs_escalation,
)
from autopack.governance.doctor_prompt import parse_doctor_verdict
from autopack.strategy import DoctorConfig

Ask = Callable[[str], str]  # model name -> the Doctor's raw answer (raises ProviderError, BudgetExceeded)


def classify_attempt(a: Attempt, audit_mode: str) -> FailureClass | None:
    """The class of ``a``'s failure, or None when it did not fail."""
    tr = a.test_result or {}
    facts = AttemptFacts(
        failure_class=a.failure_class,
        gate={**(a.gate or {}), "killed": tr.get("killed"), "error": tr.get("error")},
        audit_approved=(a.audit or {}).get("approved") if a.audit else None,
        audit_required=audit_mode == "required",
        error=a.failure or "",
    )
    try:
        return classify_failure(facts)
    except NotAFailure:
        return None
    except UnknownFailureClass:
        return FailureClass.INFRASTRUCTURE


def failure_message(a: Attempt) -> str:
    """What ``a``'s failure says, for the Doctor and the re-plan rule: its signature when one was
    recorded (an empty one on purpose: an auditor's answer that was no verdict says nothing about
    the change), else its failure text."""
    return a.failure_signature if a.failure_signature is not None else (a.failure or "")


def history(attempts: Sequence[Attempt], audit_mode: str) -> list[FailureRecord]:
    """The phase's failures, oldest first."""
    out = []
    for a in sorted(attempts, key=lambda x: x.number):
        cls = FailureClass(a.classification) if a.classification else classify_attempt(a, audit_mode)
        if cls is not None:
            out.append(FailureRecord(cls, failure_message(a)))
    return out


def no_attempts_left(cls: str | None, reason: str) -> dict[str, Any]:
    """The record of a failure after which the phase has no attempt left: it fails, by rule."""
    return {"class": cls, "action": "fail", "source": "rules", "confidence": 1.0, "reason": f"no attempts left: {reason}",
            "hint": "", "burns_attempt": True, "calls": []}


def _record(d: DoctorDecision, cls: FailureClass, calls: list[dict[str, Any]] | None = None, note: str = "") -> dict[str, Any]:
    return {
        "class": cls.value,
        "action": d.action.value,
        "source": d.source,
        "confidence": d.confidence,
        "reason": d.reason + (f" ({note})" if note else ""),
        "hint": d.hint,
        "burns_attempt": d.burns_attempt,
        "calls": calls or [],
    }


def consult(
    failures: Sequence[FailureRecord], *, cfg: DoctorConfig, already_replanned: bool, replan_reason: str | None,
    phase_calls: int, run_calls: int, ask: Ask | None,
) -> dict[str, Any] | None:
    """What to do about the latest of ``failures``: a re-plan the re-plan rule asks for, a rule's
    decision, or the model Doctor's (cheap, then strong when unsure) within its call budget. A Doctor
    that cannot answer leaves the phase to retry with the failure as feedback. Without ``ask``, None
    when a model would be asked: the caller hands the decision to a step that can ask one."""
    last = failures[-1]
    if replan_reason is not None:
        return _record(DoctorDecision(DoctorAction.REPLAN, "", 1.0, replan_reason), last.cls)
    rule = deterministic_decision(failures, already_replanned=already_replanned)
    if rule is not None:
        return _record(rule, last.cls)
    budget = DoctorBudget(cfg.max_calls_per_phase, cfg.max_calls_per_run)
    calls: list[dict[str, Any]] = []
    decision: DoctorDecision | None = None
    for model in (cfg.model, cfg.strong_model):
        if model is None or not can_call(phase_calls + len(calls), run_calls + len(calls), budget):
            break
        if ask is None:
            return None
        try:
            answer = parse_doctor_verdict(ask(model))
        except (DoctorVerdictError, ProviderError, BudgetExceeded) as exc:
            calls.append({"model": model, "error": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        calls.append({"model": model, "action": answer.action.value, "confidence": answer.confidence})
        decision = answer
        if not needs_escalation(answer, cfg.escalate_below_confidence):
            break
    if decision is None:
        why = "no Doctor model is configured" if cfg.model is None else (
            "the Doctor gave no usable answer" if calls else "the Doctor's call budget is spent")
        return _record(DoctorDecision(DoctorAction.RETRY_WITH_FIX, "", 1.0, f"{why}: retry with the failure as feedback",
                                      source="rules"), last.cls, calls)
    if decision.action is DoctorAction.REPLAN and already_replanned:
        return _record(DoctorDecision(DoctorAction.RETRY_WITH_FIX, decision.hint, decision.confidence, decision.reason,
                                      source="model"), last.cls, calls, "asked for a re-plan; the phase was already re-planned")
    if decision.action in UNDOING and needs_escalation(decision, cfg.escalate_below_confidence):
        # Ending the run, or throwing its completed phases away, on an answer too unsure to act on
        # (the strong model was out, over budget, or unsure too): the phase retries instead, within
        # its attempts, with the Doctor's hint.
        return _record(DoctorDecision(DoctorAction.RETRY_WITH_FIX, decision.hint, decision.confidence, decision.reason,
                                      source="model"), last.cls, calls,
                       f"{decision.action.value} at confidence {decision.confidence:.2f} is too unsure to act on: retried instead")
    return _record(decision, last.cls, calls)


# What the Doctor may do only when sure: end the run, or roll its branch back to the base.
UNDOING = frozenset({DoctorAction.MARK_FATAL, DoctorAction.ROLLBACK_RUN})

