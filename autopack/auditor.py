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
        return self.verdict == "approve"


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


def parse_verdict(text: str) -> AuditVerdict:
    """The JSON verdict in the Auditor's answer (a fenced or bare object)."""
    return parse_answer(text, AuditVerdict, "the auditor", VerdictError)


class JudgeDecision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: Literal["approve", "reject"]
    reasoning: str = ""


def parse_judge(text: str) -> JudgeDecision:
    return parse_answer(text, JudgeDecision, "the judge", VerdictError)


def combine(records: list[dict[str, object]], judge: dict[str, object] | None) -> dict[str, object]:
    """One audit record from two auditors' verdicts (and the judge's, when they disagreed). Pure."""
    approvals = [r.get("approved") for r in records]
    agree = approvals[0] == approvals[1] and approvals[0] is not None
    if agree:
        approved: object = approvals[0]
        summary = "; ".join(str(r.get("summary", "")) for r in records)
    elif judge is not None and judge.get("verdict") in ("approve", "reject"):
        approved = judge["verdict"] == "approve"
        summary = f"auditors disagreed; the judge decided: {judge.get('reasoning', '')}"
    else:
        approved = None
        summary = "auditors disagreed and no judge decision was available"
    issues = [i for r in records for i in (r.get("issues") or [])]  # type: ignore[union-attr]
    return {"mode": "dual", "verdicts": records, "agree": agree, "judge": judge, "approved": approved,
            "verdict": "approve" if approved else "reject" if approved is False else "undecided",
            "summary": summary, "issues": issues}
