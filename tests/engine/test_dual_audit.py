"""High-risk phases get two auditors from two providers; a disagreement goes to the judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, submit, view

pytestmark = pytest.mark.sandbox

APPROVE = '{"verdict": "approve", "summary": "looks right", "issues": []}'
REJECT = '{"verdict": "reject", "summary": "risky", "issues": [{"severity": "major", "summary": "no input validation"}]}'


def _plan():  # type: ignore[no-untyped-def]
    return parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [{
        "id": "stats", "goal": "Add calc/stats.py with mean and median.", "category": "security_auth_change", "complexity": "low",
        "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"], "acceptance_tests": ["tests/test_stats.py"]}]}]})


def _model(first: str, second: str, judge: str | None):  # type: ignore[no-untyped-def]
    good = demo_model()
    judged: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Judge"):
            assert judge is not None, "no judge expected"
            judged.append(req.messages[0].content)
            return judge
        return first if req.model == "gpt-5.4-mini" else second

    return respond, judged


def _run(local_settings, repo: Path, first: str, second: str, judge: str | None):  # type: ignore[no-untyped-def]
    respond, judged = _model(first, second, judge)
    services, _ = make_services(local_settings, respond)
    register(local_settings, repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    return view(services, run_id), judged


def test_two_auditors_from_two_providers_agree(local_settings, demo_repo: Path) -> None:
    v, judged = _run(local_settings, demo_repo, APPROVE, APPROVE, None)
    assert v["state"] == "DONE_SUCCESS"
    audit = phase(v, "stats")["attempt_details"][0]["audit"]
    assert audit["mode"] == "dual" and audit["agree"] and audit["approved"] and audit["judge"] is None
    assert [(r["model"], r["provider"]) for r in audit["verdicts"]] == [("gpt-5.4-mini", "openai"), ("claude-haiku-4-5", "anthropic")]
    assert judged == []


def test_a_disagreement_goes_to_the_judge(local_settings, demo_repo: Path) -> None:
    v, judged = _run(local_settings, demo_repo, APPROVE, REJECT, '{"verdict": "approve", "reasoning": "The issue is covered by the tests."}')
    assert v["state"] == "DONE_SUCCESS"
    audit = phase(v, "stats")["attempt_details"][0]["audit"]
    assert not audit["agree"] and audit["approved"] is True
    assert audit["judge"] == {"model": "claude-sonnet-4-6", "verdict": "approve", "reasoning": "The issue is covered by the tests."}
    assert [r["verdict"] for r in audit["verdicts"]] == ["approve", "reject"]
    assert len(judged) == 1 and "no input validation" in judged[0] and "gpt-5.4-mini (openai)" in judged[0]


def test_a_judge_rejection_fails_the_attempt(local_settings, demo_repo: Path) -> None:
    v, judged = _run(local_settings, demo_repo, REJECT, APPROVE, '{"verdict": "reject", "reasoning": "Validation is missing."}')
    ph = phase(v, "stats")
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED" and ph["attempts"] == ph["max_attempts"] == 2
    assert all(a["audit"]["judge"]["verdict"] == "reject" for a in ph["attempt_details"])
    assert "Validation is missing." in ph["attempt_details"][0]["audit"]["summary"]
    assert len(judged) == 2


def test_an_unreachable_second_auditor_is_a_provider_error_that_uses_no_attempt(local_settings, demo_repo: Path) -> None:
    """The second auditor's provider fails on the first four reviews (two attempts allowed): each is
    a provider error, re-audited without a new build and without asking the judge; the fifth review
    approves the same candidate."""
    from autopack.errors import ProviderError

    outage = {"left": 4}
    respond, judged = _model(APPROVE, APPROVE, None)

    def flaky(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Auditor") and req.model != "gpt-5.4-mini" and outage["left"] > 0:
            outage["left"] -= 1
            raise ProviderError("anthropic", "internal server error", 500)
        return respond(req)

    services, client = make_services(local_settings, flaky)
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    details = phase(v, "stats")["attempt_details"]
    assert [(d["failure_class"], d["audit"]["verdict"]) for d in details] == [("provider_error", "error")] * 4 + [(None, "approve")]
    assert [r["verdict"] for r in details[0]["audit"]["verdicts"]] == ["approve", "error"]
    assert judged == [] and sum(c.system.startswith("You are the Builder") for c in client.calls) == 1


def test_a_second_auditor_without_a_verdict_goes_to_no_judge(local_settings, demo_repo: Path) -> None:
    v, judged = _run(local_settings, demo_repo, APPROVE, "Looks fine to me.", None)
    audit = phase(v, "stats")["attempt_details"][0]["audit"]
    assert audit["verdict"] == "invalid" and audit["approved"] is None and audit["judge"] is None
    assert judged == []
