"""Provider errors never use up a phase's attempts; the run's health budget bounds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.decide import health_counts, health_exceeded
from autopack.errors import ProviderUnavailable
from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, submit, view

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
            seen["n"] += 1
            if seen["n"] <= failures:
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
