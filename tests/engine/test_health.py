"""Provider errors never use up a phase's attempts; the run's health budget bounds them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import event

from autopack.db.models import ModelCall
from autopack.db.session import session_scope
from autopack.decide import health_counts, health_exceeded
from autopack.engine.costs import report
from autopack.errors import ProviderUnavailable
from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, stats_model, stats_plan, submit, view

pytestmark = pytest.mark.sandbox


def _plan():  # type: ignore[no-untyped-def]
    return parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [{
        "id": "stats", "goal": "Add calc/stats.py with mean and median.", "category": "docs", "complexity": "low",
        "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"], "acceptance_tests": ["tests/test_stats.py"]}]}]})


def _flaky_provider(failures: int):  # type: ignore[no-untyped-def]
    good = demo_model()
    seen = {"n": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            if req.model == "claude-haiku-4-5":  # each attempt starts its fallback chain here
                seen["n"] += 1
            if seen["n"] <= failures:  # every provider of the chain is down for this attempt
                raise ProviderUnavailable("anthropic", "overloaded", 529)
            return good.__globals__["STATS"]
        return good(req)

    return respond


def test_provider_errors_do_not_burn_attempts(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _flaky_provider(2))
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())  # category docs: 2 attempts
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    ph = phase(v, "stats")
    assert ph["max_attempts"] == 2 and ph["attempts"] == 3
    assert [a["failure_class"] for a in ph["attempt_details"]] == ["provider_error", "provider_error", None]


def test_health_budget_ends_a_run_that_keeps_failing(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _flaky_provider(1000))
    run_cfg = services.config.strategy.run.model_copy(update={"max_provider_errors": 2})
    services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"run": run_cfg})})
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_HEALTH_BUDGET"
    assert "provider errors 3 > 2" in v["failure_reason"]
    assert phase(v, "stats")["state"] == "FAILED" and phase(v, "stats")["attempts"] == 3


@pytest.mark.parametrize(("classes", "caps", "exceeded"), [
    ([None, "provider_error", "provider_error"], (1, 5, 5), "provider errors 2 > 1"),
    (["edit_invalid", "truncated", "edit_refused"], (5, 2, 5), "edit failures 3 > 2"),
    (["test_failure"] * 4, (5, 5, 3), "failures 4 > 3"),
    (["test_failure", "provider_error", None], (1, 1, 2), None),
])
def test_health_counts(classes, caps, exceeded) -> None:  # type: ignore[no-untyped-def]
    result = health_exceeded(health_counts(classes), *caps)
    assert (result is None) if exceeded is None else (result is not None and result.startswith(exceeded))


def test_cost_reports_add_up(local_settings, demo_repo: Path) -> None:
    from autopack.db.session import session_scope
    from autopack.engine.costs import report, run_costs
    from autopack.engine.runs import get_project, get_run
    from web import create_app

    services, _ = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    with session_scope(local_settings.db_url) as s:
        costs = run_costs(s, get_run(s, run_id))
        total = costs["total"]
        assert total["calls"] == len(costs["calls"]) > 0
        assert total["input_tokens"] + total["output_tokens"] == costs["caps"]["tokens_used"]
        assert sum(b["calls"] for b in costs["by_role"].values()) == total["calls"]
        assert set(costs["by_role"]) == {"builder", "auditor"} and set(costs["by_phase"]) == {"stats"}
        assert abs(sum(b["cost_usd"] for b in costs["by_model"].values()) - costs["caps"]["cost_usd"]) < 1e-6
        rep = report(s, get_project(s, "demo"), None)
        assert rep["by_run"][run_id]["calls"] == total["calls"] and rep["total"]["calls"] == total["calls"]
    client = create_app(local_settings, config=services.config, broker_check=lambda: None).test_client()
    assert client.get(f"/runs/{run_id}/costs").get_json()["total"] == total
    assert client.get("/reports/costs?project=demo&since=2000-01-01").get_json()["total"]["calls"] == total["calls"]
    assert client.get("/reports/costs?since=yesterday").status_code == 422
    assert client.get("/reports/costs?project=ghost").status_code == 404
    assert client.get("/reports/costs?since=2999-01-01").get_json()["total"]["calls"] == 0


def test_cost_report_since_with_an_offset_is_the_same_instant(local_settings, demo_repo: Path) -> None:
    """``since=2026-01-01T02:00:00+02:00`` is 00:00 UTC: a call at 01:00 UTC is in the report (SQLite's
    DateTime dropped the offset, so the report started at 02:00 UTC)."""
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    with session_scope(local_settings.db_url) as s:
        s.add(ModelCall(run_id=run_id, role="builder", provider="anthropic", model="x", request_key="k", prompt={},
                        input_tokens=10, output_tokens=0, cost_usd=1.0, created_at=datetime(2026, 1, 1, 1, 0, tzinfo=timezone.utc)))
    since = datetime.fromisoformat("2026-01-01T02:00:00+02:00")  # what web/app.py parses
    statements: list[str] = []

    def seen(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    with session_scope(local_settings.db_url) as s:
        engine = s.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            out = report(s, None, since)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert out["total"] == {"calls": 1, "input_tokens": 10, "output_tokens": 0, "cost_usd": 1.0}, out["by_day"]
    assert list(out["by_day"]) == ["2026-01-01"] and list(out["by_role_model"]) == ["builder · x"]
    # The figures only: not every call's prompt and answer (whole rows), to sum four numbers.
    assert not any("prompt" in st or "response_text" in st for st in statements), statements
