"""The Auditor: prompt rendering and verdict parsing. Plain functions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autopack.answers import parse_answer
from autopack.prompts import LESSONS_NOTE, PromptLibrary

MAX_DIFF_CHARS = 60_000


class AuditIssue(BaseModel):
    model_config = ConfigDict(extra="ignore")

    severity: Literal["minor", "major"] = "major"
    summary: str
    path: str = ""


class AuditVerdict(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: Literal["approve", "reject"]
    summary: str = ""
    issues: list[AuditIssue] = Field(default_factory=list)

    @property
    def approved(self) -> bool:
        """An approval that lists a major (blocking) issue contradicts itself: it approves nothing."""
        return self.verdict == "approve" and not any(i.severity == "major" for i in self.issues)


class VerdictError(ValueError):
    """The Auditor's answer is not a verdict."""


def render_auditor_prompt(
    lib: PromptLibrary, *, phase_id: str, goal: str, category: str, deliverables: list[str], gate: str, diff: str,
    rules_text: str = "",
) -> tuple[str, str]:
    if len(diff) > MAX_DIFF_CHARS:
        diff = diff[:MAX_DIFF_CHARS] + "\n… (diff truncated by Autopack)"
    system = lib.render("auditor_system")
    user = lib.render(
        "auditor",
        phase_id=phase_id,
        goal=goal.strip(),
        category=category,
        deliverables=", ".join(deliverables) or "(none)",
        gate=gate,
        diff=diff or "(empty diff)",
        rules=f"\n## Project rules the change should respect\n{LESSONS_NOTE}\n{rules_text}\n" if rules_text else "",
    )
    return system, user


def parse_verdict(text: str, *, truncated: bool = False, stop_reason: str = "max_tokens") -> AuditVerdict:
    """The JSON verdict in the Auditor's answer (a fenced or bare object); none in a ``truncated``
    (unfinished) one."""
    return parse_answer(text, AuditVerdict, "the auditor", VerdictError, truncated=truncated, stop_reason=stop_reason)


class JudgeDecision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: Literal["approve", "reject"]
    reasoning: str = ""


def parse_judge(text: str, *, truncated: bool = False, stop_reason: str = "max_tokens") -> JudgeDecision:
    return parse_answer(text, JudgeDecision, "the judge", VerdictError, truncated=truncated, stop_reason=stop_reason)


# A reviewer's verdict that is no opinion on the change: its provider failed ("error") or its answer
# was no usable verdict ("invalid").
NO_VERDICT = ("error", "invalid")


def needs_judge(records: list[dict[str, object]]) -> bool:
    """Whether two auditors' reviews are a real split (one approves, the other rejects): only then
    does the judge decide. A reviewer without a verdict is no side of a disagreement."""
    if any(r.get("verdict") in NO_VERDICT for r in records):
        return False
    return records[0].get("approved") != records[1].get("approved")


def combine(records: list[dict[str, object]], judge: dict[str, object] | None) -> dict[str, object]:
    """One audit record from two auditors' verdicts (and the judge's, when they disagreed). Pure.

    The combined verdict is "error" when a reviewer's (or the judge's) provider failed, so the audit
    is retried as a provider error like a single one; "invalid" when a reviewer gave no usable
    verdict; otherwise the auditors' common verdict, or the judge's on a split ("undecided" when
    the judge gave no usable answer)."""
    issues = [i for r in records for i in (r.get("issues") or [])]  # type: ignore[union-attr]
    approvals = [r.get("approved") for r in records]
    agree = approvals[0] == approvals[1] and approvals[0] is not None
    missing = [r for r in records if r.get("verdict") in NO_VERDICT]
    verdict: str
    if missing:
        kind = "error" if any(r.get("verdict") == "error" for r in missing) else "invalid"
        approved: object = None
        agree = False
        verdict = kind
        summary = "; ".join(f"{r.get('model')}: {r.get('summary', '')}" for r in missing)
        summary = ("an auditor could not be reached: " if kind == "error" else "an auditor gave no usable verdict: ") + summary
    elif agree:
        approved = approvals[0]
        verdict = "approve" if approved else "reject"
        summary = "; ".join(str(r.get("summary", "")) for r in records)
    elif judge is not None and judge.get("verdict") in ("approve", "reject"):
        approved = judge["verdict"] == "approve"
        verdict = "approve" if approved else "reject"
        summary = f"auditors disagreed; the judge decided: {judge.get('reasoning', '')}"
    elif judge is not None and judge.get("verdict") == "error":
        approved, verdict = None, "error"
        summary = f"auditors disagreed and the judge could not be reached: {judge.get('reasoning', '')}"
    else:
        approved, verdict = None, "undecided"
        summary = "auditors disagreed and no judge decision was available"
    return {"mode": "dual", "verdicts": records, "agree": agree, "judge": judge, "approved": approved,
            "verdict": verdict, "summary": summary, "issues": issues}
