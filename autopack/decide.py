"""What to do with a finished attempt: complete, retry with feedback, or fail. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["complete", "retry", "fail"]

# Failures that are not the phase's fault: they never use up one of its attempts.
NOT_BURNING = frozenset({"provider_error", "infrastructure"})
EDIT_FAILURES = frozenset({"edit_invalid", "edit_refused", "truncated"})


@dataclass(frozen=True)
class HealthCounts:
    provider_errors: int
    edit_failures: int
    total_failures: int


def health_counts(failure_classes: list[str | None]) -> HealthCounts:
    """Counts over a run's finished attempts (their failure classes; None for a success)."""
    failed = [c for c in failure_classes if c]
    return HealthCounts(
        provider_errors=sum(1 for c in failed if c == "provider_error"),
        edit_failures=sum(1 for c in failed if c in EDIT_FAILURES),
        total_failures=len(failed),
    )


def health_exceeded(counts: HealthCounts, max_provider_errors: int, max_edit_failures: int, max_total_failures: int) -> str | None:
    """Why the run's health budget is spent, or None."""
    for name, value, cap in (("provider errors", counts.provider_errors, max_provider_errors),
                             ("edit failures", counts.edit_failures, max_edit_failures),
                             ("failures", counts.total_failures, max_total_failures)):
        if value > cap:
            return (f"{name} {value} > {cap} (provider errors {counts.provider_errors}, edit failures {counts.edit_failures}, "
                    f"failures {counts.total_failures})")
    return None


@dataclass(frozen=True)
class AttemptOutcome:
    """Everything the decision looks at, as plain data."""

    built: bool  # edits were produced, governed and committed
    build_failure: str | None  # why not, when not built
    failure_class: str | None  # edit_invalid | edit_refused | truncated | ...
    gate_passed: bool | None  # None when the gate did not run
    gate_reason: str
    audit_mode: str  # required | advisory | off
    audit_approved: bool | None  # None when no audit ran
    audit_summary: str
    attempts_used: int
    max_attempts: int


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    feedback: str  # given to the Builder on a retry


def decide(o: AttemptOutcome) -> Decision:
    if not o.built:
        reason = f"{o.failure_class or 'build_failed'}: {o.build_failure or 'no edits'}"
    elif not o.gate_passed:
        reason = f"test gate: {o.gate_reason}"
    elif o.audit_mode == "required" and o.audit_approved is not True:
        reason = f"auditor rejected: {o.audit_summary or 'no approval'}"
    else:
        note = ""
        if o.audit_mode == "advisory" and o.audit_approved is False:
            note = f" (advisory audit objected: {o.audit_summary})"
        return Decision("complete", "gate passed" + note, "")
    if o.attempts_used >= o.max_attempts:
        return Decision("fail", f"{reason} (attempt {o.attempts_used} of {o.max_attempts})", reason)
    return Decision("retry", reason, reason)
