"""Auditor verdicts are parsed strictly; the prompt carries the diff and the gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.auditor import VerdictError, parse_verdict, render_auditor_prompt
from autopack.prompts import PromptLibrary
from autopack.settings import ROOT


@pytest.mark.parametrize("text", [
    '{"verdict": "approve", "summary": "ok", "issues": []}',
    'Here is my review:\n```json\n{"verdict": "approve", "summary": "ok"}\n```\nThanks.',
])
def test_approvals(text: str) -> None:
    v = parse_verdict(text)
    assert v.approved and v.summary == "ok" and v.issues == []


def test_rejection_with_issues() -> None:
    v = parse_verdict('{"verdict": "reject", "summary": "bad", "issues": [{"severity": "minor", "summary": "naming", "path": "a.py"}, {"summary": "no tests"}]}')
    assert not v.approved
    assert [(i.severity, i.summary, i.path) for i in v.issues] == [("minor", "naming", "a.py"), ("major", "no tests", "")]


@pytest.mark.parametrize("text", ["I approve.", '{"verdict": "maybe"}', '{"verdict": approve}', '{"summary": "x"}'])
def test_malformed_verdicts(text: str) -> None:
    with pytest.raises(VerdictError):
        parse_verdict(text)


def test_prompt_carries_diff_and_gate() -> None:
    system, user = render_auditor_prompt(PromptLibrary(ROOT / "prompts"), phase_id="p1", goal="Add x", category="feature",
                                         deliverables=["x.py"], gate="passed: 3 passed", diff="+x = 1\n")
    assert system.startswith("You are the Auditor") and '"verdict"' in system
    assert "p1" in user and "Add x" in user and "passed: 3 passed" in user and "+x = 1" in user and "x.py" in user
    _, long_user = render_auditor_prompt(PromptLibrary(Path(ROOT / "prompts")), phase_id="p", goal="g", category="c",
                                         deliverables=[], gate="", diff="+" + "y" * 100_000)
    assert "diff truncated by Autopack" in long_user and len(long_user) < 70_000


def test_combine_two_verdicts() -> None:
    from autopack.auditor import combine, parse_judge

    yes = {"model": "a", "approved": True, "summary": "ok", "issues": []}
    no = {"model": "b", "approved": False, "summary": "bad", "issues": [{"severity": "major", "summary": "x"}]}
    assert combine([yes, dict(yes)], None)["approved"] is True
    assert combine([no, dict(no)], None)["verdict"] == "reject"
    split = combine([yes, no], None)
    assert split["agree"] is False and split["approved"] is None and split["verdict"] == "undecided"
    judged = combine([yes, no], {"verdict": "reject", "reasoning": "x matters"})
    assert judged["approved"] is False and "x matters" in judged["summary"] and judged["issues"] == no["issues"]
    assert parse_judge('{"verdict": "approve", "reasoning": "fine"}').verdict == "approve"
    with pytest.raises(VerdictError):
        parse_judge("I side with the first auditor.")
