"""A test that newly fails is re-run once: passing on the re-run makes it flaky (recorded, not
blocking) under normal CI, and still blocking under strict CI (high-risk categories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.plan import parse_plan
from tests.engine.harness import commit_all, drive, make_services, phase, register, submit, view

pytestmark = pytest.mark.sandbox

# Order-dependent: fails in the full suite once calc/extra.py exists, passes when selected alone.
ORDER_TEST = '''import os
import sys


def test_order_sensitive():
    selected = any("::" in arg for arg in sys.argv)
    assert selected or not os.path.exists("calc/extra.py")
'''

EXTRA = "=== FILE: calc/extra.py ===\n```python\nEXTRA = 1\n```\n"
APPROVE = '{"verdict": "approve", "summary": "fine", "issues": []}'


@pytest.fixture()
def flaky_repo(demo_repo: Path) -> Path:
    commit_all(demo_repo, "order-sensitive test", {"tests/test_order.py": ORDER_TEST})
    return demo_repo


def _plan(category: str):  # type: ignore[no-untyped-def]
    return parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [{
        "id": "extra", "goal": "Add calc/extra.py.", "category": category, "complexity": "low",
        "scope": ["calc/extra.py"], "deliverables": ["calc/extra.py"], "acceptance_tests": ["tests/test_core.py"]}]}]})


def _respond(req):  # type: ignore[no-untyped-def]
    return APPROVE if req.system.startswith("You are the Auditor") else EXTRA


def test_flaky_test_is_recorded_and_does_not_block_normal_ci(local_settings, flaky_repo: Path) -> None:
    services, _ = make_services(local_settings, _respond)
    register(local_settings, flaky_repo)
    run_id = submit(services, _plan("feature"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    gate = phase(v, "extra")["attempt_details"][0]["gate"]
    assert gate["flaky"] == ["tests/test_order.py::test_order_sensitive"]
    assert gate["regressions"] == [] and gate["passed"] and gate["ci_profile"] == "normal"


def test_flaky_test_blocks_strict_ci(local_settings, flaky_repo: Path) -> None:
    services, _ = make_services(local_settings, _respond)
    register(local_settings, flaky_repo)
    run_id = submit(services, _plan("schema_contract_change"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED"
    ph = phase(v, "extra")
    assert ph["attempts"] == ph["max_attempts"] == 2
    for attempt in ph["attempt_details"]:
        assert attempt["gate"]["ci_profile"] == "strict" and not attempt["gate"]["passed"]
        assert attempt["gate"]["flaky"] == ["tests/test_order.py::test_order_sensitive"]
        assert "strict CI" in attempt["gate"]["reason"]


ORDER_ID = "tests/test_order.py::test_order_sensitive"


def test_a_test_flaky_in_two_runs_is_quarantined_and_still_blocks_strict_ci(local_settings, flaky_repo: Path) -> None:
    """Quarantine gives a known-flaky test more re-runs; it does not open strict CI, since a record
    cannot tell a test that flakes anyway from one a high-risk change made flaky."""
    from autopack.events.dispatch import dispatch_pending

    services, _ = make_services(local_settings, _respond)
    register(local_settings, flaky_repo)
    gates = []
    for _ in range(3):  # normal-CI runs in which it flakes, each folded in when it ends
        run_id = submit(services, _plan("feature"))
        drive(services, ("start_run", run_id))
        v = view(services, run_id)
        assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
        gates.append(phase(v, "extra")["attempt_details"][0]["gate"])
        dispatch_pending(services, run_id)
    assert [g["known_flaky"] for g in gates] == [[], [], [ORDER_ID]]  # quarantined when the second run ended
    assert all(g["flaky"] == [ORDER_ID] and g["passed"] for g in gates)
    assert "1 of them quarantined" in gates[2]["reason"]
    strict = submit(services, _plan("schema_contract_change"))
    drive(services, ("start_run", strict))
    v = view(services, strict)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED"
    for attempt in phase(v, "extra")["attempt_details"]:
        gate = attempt["gate"]
        assert gate["ci_profile"] == "strict" and not gate["passed"] and gate["known_flaky"] == [ORDER_ID]
        assert gate["reason"] == f"strict CI: flaky tests block ({ORDER_ID})"


# Passes at its 1st, 4th and later runs, fails at its 2nd and 3rd: with the baseline first, the
# candidate's run and its first re-run fail, and only a second re-run passes.
COUNTED_TEST = '''from pathlib import Path

COUNTER = Path({counter!r})


def test_counted():
    n = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(n + 1))
    assert n not in {fails}
'''
COUNTED_ID = "tests/test_counted.py::test_counted"


def _add_counted_test(repo: Path, counter: Path, fails: tuple[int, ...]) -> None:
    commit_all(repo, "a test that counts its runs", {"tests/test_counted.py": COUNTED_TEST.format(counter=str(counter), fails=repr(fails))})


@pytest.mark.parametrize("case", ["quarantined", "not quarantined", "quarantined, no time left"])
def test_a_quarantined_test_gets_more_reruns_before_its_failure_is_a_regression(
        local_settings, demo_repo: Path, tmp_path: Path, case: str) -> None:
    """Without the sandbox (its copies are thrown away) so the test can count its runs in a file.
    The extra re-runs also stop where one more full test run (test_timeout_s, 300 s) could reach the
    ci queue's time limit."""
    import dataclasses

    from autopack.db.models import FlakyTest, Project
    from autopack.db.session import session_scope
    from autopack.engine.leases import now_utc
    from autopack.sandbox.runner import UnsandboxedRunner

    counter = tmp_path / "runs-of-test_counted"
    _add_counted_test(demo_repo, counter, fails=(1, 2))
    quarantined = case.startswith("quarantined")
    settings = local_settings.model_copy(update={"ci_time_limit": 300}) if "no time" in case else local_settings
    services, _ = make_services(settings, _respond)
    services = dataclasses.replace(services, sandbox=UnsandboxedRunner())
    register(local_settings, demo_repo)
    if quarantined:
        with session_scope(local_settings.db_url) as s:
            project = s.query(Project).one()
            now = now_utc()
            s.add(FlakyTest(project_id=project.id, test_id=COUNTED_ID, state="quarantined", state_reason="flaky in 2 runs",
                            flaky_count=2, runs=["a", "b"], passes_since_flaky=0, first_seen_at=now, last_flaky_at=now, state_changed_at=now))
    run_id = submit(services, _plan("feature"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = phase(v, "extra")["attempt_details"][0]
    with session_scope(local_settings.db_url) as s:
        from autopack.db.models import Attempt

        result = s.query(Attempt).filter_by(run_id=run_id, number=1).one().test_result
    if case == "quarantined":  # baseline, candidate, re-run, one more re-run (passes): done at the first attempt
        assert counter.read_text() == "4"
        assert len(phase(v, "extra")["attempt_details"]) == 1
        assert first["gate"]["passed"] and first["gate"]["known_flaky"] == [COUNTED_ID] and first["gate"]["regressions"] == []
        assert result["rerun"]["outcomes"][COUNTED_ID] == "failed"
        assert result["rerun"]["extra"] == [{"tests": [COUNTED_ID], "outcomes": {COUNTED_ID: "passed"}, "killed": None}]
    else:  # one re-run only: a regression; the second attempt's run passes
        assert not first["gate"]["passed"] and first["gate"]["regressions"] == [COUNTED_ID] and first["gate"]["known_flaky"] == []
        assert "extra" not in result["rerun"]
        assert len(phase(v, "extra")["attempt_details"]) == 2
        assert result["rerun"].get("extra_skipped") == ("no room left under the ci queue's time limit" if quarantined else None)


@pytest.mark.parametrize(("snapshot", "live"), [(0, 2), (2, 0)])
def test_the_extra_reruns_of_a_quarantined_test_come_from_the_runs_strategy_snapshot(
        local_settings, demo_repo: Path, tmp_path: Path, snapshot: int, live: int) -> None:
    """The run was submitted with ``quarantine_reruns: snapshot``; the config was changed to ``live``
    before its gate ran. The gate keeps to what the run started with, like its other settings."""
    import dataclasses

    from autopack.db.models import Attempt, FlakyTest, Project, Run
    from autopack.db.session import session_scope
    from autopack.engine.leases import now_utc
    from autopack.flakiness import FlakinessConfig
    from autopack.sandbox.runner import UnsandboxedRunner

    counter = tmp_path / "runs-of-test_counted"
    _add_counted_test(demo_repo, counter, fails=(1, 2))
    register(local_settings, demo_repo)
    with session_scope(local_settings.db_url) as s:
        project = s.query(Project).one()
        now = now_utc()
        s.add(FlakyTest(project_id=project.id, test_id=COUNTED_ID, state="quarantined", state_reason="flaky in 2 runs",
                        flaky_count=2, runs=["a", "b"], passes_since_flaky=0, first_seen_at=now, last_flaky_at=now, state_changed_at=now))

    def with_reruns(services, n: int):  # type: ignore[no-untyped-def]
        strategy = services.config.strategy.model_copy(update={"flakiness": FlakinessConfig(quarantine_reruns=n)})
        return dataclasses.replace(services, sandbox=UnsandboxedRunner(),
                                   config=services.config.model_copy(update={"strategy": strategy}))

    services, _ = make_services(local_settings, _respond)
    run_id = submit(with_reruns(services, snapshot), _plan("feature"))
    with session_scope(local_settings.db_url) as s:
        assert s.get(Run, run_id).strategy["flakiness"]["quarantine_reruns"] == snapshot
    live_services = with_reruns(services, live)
    drive(live_services, ("start_run", run_id))
    v = view(live_services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = phase(v, "extra")["attempt_details"][0]
    with session_scope(local_settings.db_url) as s:
        result = s.query(Attempt).filter_by(run_id=run_id, number=1).one().test_result
    if snapshot:  # baseline, candidate, re-run, one more re-run (passes)
        assert first["gate"]["passed"] and first["gate"]["known_flaky"] == [COUNTED_ID]
        assert result["rerun"]["extra"] == [{"tests": [COUNTED_ID], "outcomes": {COUNTED_ID: "passed"}, "killed": None}]
    else:  # no extra re-run, whatever the live config says: a regression
        assert not first["gate"]["passed"] and first["gate"]["regressions"] == [COUNTED_ID]
        assert "extra" not in result["rerun"] and len(phase(v, "extra")["attempt_details"]) == 2


def test_an_attempt_strict_ci_blocked_only_for_a_flake_leaves_no_lesson(local_settings, demo_repo: Path, tmp_path: Path) -> None:
    """The test fails once (the first attempt's run) and passes its re-run: strict CI blocks that
    attempt, the second passes. Nothing was fixed, so no hint (nor a rule, later) may say it was."""
    import dataclasses

    from autopack.db.models import Event, Hint
    from autopack.db.session import session_scope
    from autopack.sandbox.runner import UnsandboxedRunner

    _add_counted_test(demo_repo, tmp_path / "runs-of-test_counted", fails=(1,))
    services, _ = make_services(local_settings, _respond)
    services = dataclasses.replace(services, sandbox=UnsandboxedRunner())
    register(local_settings, demo_repo)
    run_id = submit(services, _plan("schema_contract_change"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first, second = phase(v, "extra")["attempt_details"]
    assert first["gate"]["blocked_as_flaky"] and first["gate"]["flaky"] == [COUNTED_ID] and not first["gate"]["passed"]
    assert first["failure_class"] == "test_failure" and second["decision"] == "complete"
    assert second["gate"]["blocked_as_flaky"] is False
    with session_scope(local_settings.db_url) as s:
        assert s.query(Hint).count() == 0
        assert s.query(Event).filter_by(run_id=run_id, type="hint.recorded").count() == 0
