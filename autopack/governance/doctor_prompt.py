"""The model Doctor: prompt rendering (``prompts/doctor_system.md``, ``prompts/doctor.md``) and
parsing of its JSON decision. Plain functions."""

from __future__ import annotations

from collections.abc import Sequence

from autopack.errors import DoctorVerdictError
from autopack.answers import json_object
from autopack.governance.doctor import DoctorAction, DoctorDecision, FailureRecord
from autopack.normalize import normalize_error
from autopack.prompts import PromptLibrary

MAX_FAILURE_CHARS = 1500  # per failure in the prompt; the latest one gets twice as much


def render_history(history: Sequence[FailureRecord]) -> str:
    """Numbered failures, oldest first; older messages normalised and shortened."""
    lines: list[str] = []
    for i, f in enumerate(history, 1):
        latest = i == len(history)
        text = f.message.strip() if latest else normalize_error(f.message)
        limit = MAX_FAILURE_CHARS * (2 if latest else 1)
        if len(text) > limit:
            text = text[:limit] + " …"
        lines.append(f"{i}. {f.cls.value}{' (latest)' if latest else ''}\n{text or '(no message)'}")
    return "\n\n".join(lines) or "(none)"


def render_doctor_prompt(
    lib: PromptLibrary, *, phase_id: str, category: str, goal: str, scope: Sequence[str],
    history: Sequence[FailureRecord], attempts_used: int, max_attempts: int, already_replanned: bool,
) -> tuple[str, str]:
    system = lib.render("doctor_system")
    user = lib.render(
        "doctor", phase_id=phase_id, category=category, goal=goal.strip(), scope=", ".join(scope) or "(none)",
        attempts_used=str(attempts_used), max_attempts=str(max_attempts), replanned="yes" if already_replanned else "no",
        history=render_history(history),
    )
    return system, user


def parse_doctor_verdict(text: str) -> DoctorDecision:
    """The Doctor's decision (source "model"). Raises ``DoctorVerdictError`` when the answer has no
    JSON object, an unknown action, a confidence that is not a number within 0..1, or a
    ``retry_with_fix`` without a hint."""
    try:
        data = json_object(text)
    except ValueError as exc:
        raise DoctorVerdictError(f"Doctor answer: {exc}") from None
    try:
        action = DoctorAction(data.get("action"))
    except ValueError:
        raise DoctorVerdictError(f"Doctor answer: unknown action {data.get('action')!r}") from None
    confidence = data.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 <= confidence <= 1.0:
        raise DoctorVerdictError(f"Doctor answer: confidence {confidence!r} is not a number within 0..1")
    hint, reason = data.get("hint", ""), data.get("reason", "")
    if not isinstance(hint, str) or not isinstance(reason, str):
        raise DoctorVerdictError("Doctor answer: hint and reason must be strings")
    if action is DoctorAction.RETRY_WITH_FIX and not hint.strip():
        raise DoctorVerdictError("Doctor answer: retry_with_fix needs a hint for the Builder")
    return DoctorDecision(action, hint.strip(), float(confidence), reason.strip(), source="model")
