"""What to do with a finished attempt: complete, retry with feedback, or fail. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["complete", "retry", "fail"]


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
