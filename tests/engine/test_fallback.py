"""A provider that answers 529 for the primary model: a normal category falls back along the
chain (recorded), a high-risk phase stops with the reason instead of downgrading."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from autopack.db.models import ModelCall
from autopack.db.session import session_scope
from autopack.engine.runs import list_events
from autopack.errors import ProviderUnavailable
from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, submit, view

pytestmark = pytest.mark.sandbox


def _plan(category: str):  # type: ignore[no-untyped-def]
    return parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [{
        "id": "stats", "goal": "Add calc/stats.py with mean and median.", "category": category, "complexity": "low",
        "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"], "acceptance_tests": ["tests/test_stats.py"]}]}]})


def _respond(req):  # type: ignore[no-untyped-def]
    good = demo_model()
    if req.system.startswith("You are the Builder"):
        if req.model == "claude-haiku-4-5":
            raise ProviderUnavailable("anthropic", "overloaded_error: Overloaded", 529)
        return good.__globals__["STATS"]
    if req.system.startswith("You are the Judge"):
        return '{"verdict": "approve", "reasoning": "fine"}'
    return good(req)


def test_normal_category_falls_back_along_the_chain(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _respond)
    register(local_settings, demo_repo)
    run_id = submit(services, _plan("feature"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS"
    attempt = phase(v, "stats")["attempt_details"][0]
    assert attempt["model"] == "gpt-5-mini" and phase(v, "stats")["attempts"] == 1
    with session_scope(local_settings.db_url) as s:
        calls = [(c.model, c.error is None) for c in s.scalars(select(ModelCall).where(ModelCall.role == "builder").order_by(ModelCall.id))]
        events = [e for e in list_events(s, run_id) if e["type"] == "model.fallback"]
    assert calls == [("claude-haiku-4-5", False), ("gpt-5-mini", True)]
    assert [(e["payload"]["from_model"], e["payload"]["to_model"]) for e in events] == [("claude-haiku-4-5", "gpt-5-mini")]
    assert "529" in events[0]["payload"]["reason"]


def test_high_risk_phase_stops_instead_of_downgrading(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _respond)
    register(local_settings, demo_repo)
    run_id = submit(services, _plan("security_auth_change"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_INFRASTRUCTURE"
    assert "never falls back to a weaker model" in v["failure_reason"] and "claude-haiku-4-5" in v["failure_reason"]
    with session_scope(local_settings.db_url) as s:
        models = {c.model for c in s.scalars(select(ModelCall).where(ModelCall.role == "builder"))}
    assert models == {"claude-haiku-4-5"}
