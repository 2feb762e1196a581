"""Escalation: failures move a phase up to the stronger model; the next phase of the category
starts back at its own (cheap) model, and both are recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.escalation import effective_complexity, model_from_chain, trailing_same_kind
from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, required_audit_run, submit, view

pytestmark = pytest.mark.sandbox


@pytest.mark.parametrize(("base", "failures", "per", "level"), [
    ("low", 0, 2, "low"), ("low", 1, 2, "low"), ("low", 2, 2, "medium"), ("low", 4, 2, "high"), ("low", 9, 2, "high"),
    ("medium", 1, 1, "high"), ("high", 3, 1, "high"), ("low", 5, 0, "low"),
])
def test_effective_complexity(base: str, failures: int, per: int, level: str) -> None:
    assert effective_complexity(base, failures, per) == level


def test_escalation_and_deescalation_are_used_and_recorded(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    calls: list[tuple[str, str]] = []

    def respond(req):  # type: ignore[no-untyped-def]
        first = req.messages[0].content
        if req.system.startswith("You are the Builder"):
            phase_key = "stats" if "# Phase stats" in first else "parse"
            calls.append((phase_key, req.model))
            if phase_key == "stats" and req.model == "claude-haiku-4-5":
                return good.__globals__["STATS_WRONG"]  # the cheap model keeps getting it wrong
            return good.__globals__["STATS"] if phase_key == "stats" else good.__globals__["PARSE_FIXED"]
        if req.system.startswith("You are the Planner"):
            return '{"goal": "Add calc/stats.py; raise ValueError on empty input.", "approach": "Check first."}'
        return good(req)

    services, _ = make_services(local_settings, respond)
    rb = services.config.strategy.run.model_copy(update={"escalate_after_failures": 1, "max_replans": 0})
    services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"run": rb})})
    register(local_settings, demo_repo)
    plan = parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [
        {"id": "stats", "goal": "Add calc/stats.py with mean and median.", "category": "feature", "complexity": "low",
         "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"], "acceptance_tests": ["tests/test_stats.py"]},
        {"id": "parse", "goal": "Add calc/parse.py.", "category": "feature", "complexity": "low",
         "scope": ["calc/parse.py"], "deliverables": ["calc/parse.py"], "acceptance_tests": ["tests/test_parse.py"]}]}]})
    run_id = submit(services, plan)
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS"
    assert calls == [("stats", "claude-haiku-4-5"), ("stats", "claude-sonnet-4-6"), ("parse", "claude-haiku-4-5")]
    assert [a["model"] for a in phase(v, "stats")["attempt_details"]] == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    from autopack.db.session import session_scope
    from autopack.engine.runs import list_events

    with session_scope(local_settings.db_url) as s:
        events = {e["type"]: e for e in list_events(s, run_id)}
    escalated = events["attempt.escalated"]["payload"]
    assert (escalated["level"], escalated["model"], escalated["from_model"]) == ("medium", "claude-sonnet-4-6", "claude-haiku-4-5")
    assert events["phase.deescalated"]["phase"] == "parse"
    assert events["phase.deescalated"]["payload"] == {"model": "claude-haiku-4-5", "previous_model": "claude-sonnet-4-6"}


@pytest.mark.parametrize(("kinds", "n"), [(["a"], 1), (["a", "a"], 2), (["a", "b"], 1), (["b", "a", "a", "a"], 3), (["a", "b", "a"], 1)])
def test_trailing_same_kind(kinds: list[str], n: int) -> None:
    assert trailing_same_kind(kinds) == n


@pytest.mark.parametrize(("same", "per", "model"), [(0, 2, "a"), (1, 2, "a"), (2, 2, "b"), (4, 2, "c"), (9, 2, "c"), (3, 0, "a"), (1, 1, "b")])
def test_model_from_chain(same: int, per: int, model: str) -> None:
    assert model_from_chain(["a", "b", "c"], same, per) == model
    with pytest.raises(ValueError):
        model_from_chain([], same, per)


def test_repeated_failures_of_one_kind_move_along_the_levels_chain(local_settings, demo_repo: Path) -> None:
    """A phase already at `high` cannot move up a level: two test failures in a row send its third
    attempt to the next model of the high chain (gpt-5.4); the Auditor's chain works the same way on
    answers that are no verdict."""
    good = demo_model()
    builders: list[str] = []
    auditors: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            builders.append(req.model)
            return good.__globals__["STATS" if req.model == "gpt-5.4" else "STATS_WRONG"]
        if req.system.startswith("You are the Auditor"):
            auditors.append(req.model)
        if req.system.startswith("You are the Doctor"):
            return '{"action": "retry_with_fix", "hint": "raise on empty input", "confidence": 0.9, "reason": "r"}'
        return good(req)

    services, _ = make_services(local_settings, respond)
    rb = services.config.strategy.run.model_copy(update={"max_replans": 0})
    strategy = services.config.strategy.model_copy(update={"run": rb})
    strategy.categories["feature"] = {"max_attempts": 3, "audit": "required"}
    services.config = services.config.model_copy(update={"strategy": strategy})
    register(local_settings, demo_repo)
    run_id = submit(services, parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [
        {"id": "stats", "goal": "Add calc/stats.py with mean and median.", "category": "feature", "complexity": "high",
         "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"], "acceptance_tests": ["tests/test_stats.py"]}]}]}))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert builders == ["claude-sonnet-4-6", "claude-sonnet-4-6", "gpt-5.4"]
    third = phase(v, "stats")["attempt_details"][2]
    assert third["routing"]["wanted"] == "gpt-5.4" and "2 consecutive test_failure failures at high" in third["routing"]["why"]
    assert auditors == ["gpt-5.4"]  # the high auditor; only the passing attempt is audited


def test_the_auditor_moves_along_its_chain_after_unusable_answers(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    auditors: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            auditors.append(req.model)
            return good(req) if req.model == "gpt-5.4" else "Looks fine to me."
        if req.system.startswith("You are the Doctor"):
            return '{"action": "retry_with_fix", "hint": "same again", "confidence": 0.9, "reason": "the auditor was unsure"}'
        return good(req)

    services, run_id = required_audit_run(local_settings, respond, demo_repo, max_replans=0)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert auditors == ["gpt-5.4-mini", "gpt-5.4-mini", "gpt-5.4"]
    details = phase(v, "stats")["attempt_details"]
    assert [d["audit"]["verdict"] for d in details] == ["invalid", "invalid", "approve"]
    assert details[0]["classification"] == "auditor_rejection"


def test_auditor_rejections_move_the_builder_up_a_level(local_settings, demo_repo: Path) -> None:
    """Two attempts rejected by a required audit are two failed attempts, as for the gate: the third
    is built by the next level's model (escalate_after_failures 2, the default)."""
    import json

    good = demo_model()
    builders: list[str] = []
    audits = {"n": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            builders.append(req.model)
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            audits["n"] += 1
            if audits["n"] <= 2:
                return json.dumps({"verdict": "reject", "summary": f"objection {audits['n']}",
                                   "issues": [{"severity": "major", "summary": f"problem number {audits['n']}"}]})
        if req.system.startswith("You are the Doctor"):
            return '{"action": "retry_with_fix", "hint": "address the review", "confidence": 0.9, "reason": "r"}'
        return good(req)

    services, run_id = required_audit_run(local_settings, respond, demo_repo, max_replans=0)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert builders == ["claude-haiku-4-5", "claude-haiku-4-5", "claude-sonnet-4-6"]
    first = phase(v, "stats")["attempt_details"][0]
    assert first["failure_class"] == "auditor_rejection" and "problem number 1" in first["failure"]
