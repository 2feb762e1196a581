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


def test_an_approval_that_lists_a_major_issue_approves_nothing() -> None:
    blocking = parse_verdict('{"verdict": "approve", "summary": "fine", "issues": [{"severity": "major", "summary": "deletes data"}]}')
    assert not blocking.approved and blocking.issues[0].summary == "deletes data"  # the issue is kept
    assert parse_verdict('{"verdict": "approve", "issues": [{"severity": "minor", "summary": "naming"}]}').approved


def test_a_truncated_answer_is_no_verdict() -> None:
    from autopack.auditor import parse_judge

    with pytest.raises(VerdictError, match="cut off"):
        parse_verdict('{"verdict": "approve", "summary": "ok", "issues": []}', truncated=True)
    with pytest.raises(VerdictError, match="cut off"):
        parse_judge('{"verdict": "approve", "reasoning": "fine"}', truncated=True)


def test_a_reviewer_without_a_verdict_is_no_side_of_a_disagreement() -> None:
    """Only an approve-against-reject split goes to the judge. A reviewer whose provider failed makes
    the audit a provider error ("error": re-audited, no attempt used); one whose answer was no
    verdict makes it "invalid"; a judge whose provider failed makes it "error" too."""
    from autopack.auditor import combine, needs_judge

    yes = {"model": "a", "verdict": "approve", "approved": True, "summary": "ok", "issues": []}
    no = {"model": "b", "verdict": "reject", "approved": False, "summary": "bad", "issues": [{"severity": "major", "summary": "x"}]}
    down = {"model": "b", "verdict": "error", "approved": None, "summary": "HTTP 500", "issues": []}
    babble = {"model": "b", "verdict": "invalid", "approved": None, "summary": "no JSON object", "issues": []}
    assert needs_judge([yes, no]) and not needs_judge([yes, dict(yes)])
    assert not needs_judge([yes, down]) and not needs_judge([no, babble])
    for records, verdict in (([yes, down], "error"), ([down, no], "error"), ([yes, babble], "invalid"), ([babble, down], "error")):
        combined = combine(records, None)
        assert (combined["verdict"], combined["approved"], combined["agree"]) == (verdict, None, False)
    assert "HTTP 500" in combine([yes, down], None)["summary"]
    judge_down = combine([yes, no], {"verdict": "error", "reasoning": "HTTP 529"})
    assert judge_down["verdict"] == "error" and judge_down["approved"] is None and "HTTP 529" in judge_down["summary"]
