"""Escalation: failures move a phase up to the stronger model; the next phase of the category
starts back at its own (cheap) model, and both are recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.escalation import effective_complexity
from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, submit, view

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
    assert calls == [("stats", "claude-haiku-4-5"), ("stats", "claude-sonnet-4-5"), ("parse", "claude-haiku-4-5")]
    assert [a["model"] for a in phase(v, "stats")["attempt_details"]] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    from autopack.db.session import session_scope
    from autopack.engine.runs import list_events

    with session_scope(local_settings.db_url) as s:
        events = {e["type"]: e for e in list_events(s, run_id)}
    escalated = events["attempt.escalated"]["payload"]
    assert (escalated["level"], escalated["model"], escalated["from_model"]) == ("medium", "claude-sonnet-4-5", "claude-haiku-4-5")
    assert events["phase.deescalated"]["phase"] == "parse"
    assert events["phase.deescalated"]["payload"] == {"model": "claude-haiku-4-5", "previous_model": "claude-sonnet-4-5"}
