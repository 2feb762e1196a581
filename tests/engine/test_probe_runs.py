"""The probe's and the baseline's test runs in the sandbox: a JUnit report the commit carries never
passes for the run's own, and newly failing tests too many to name are re-run as the whole suite (their
ids would not fit on the sandbox's command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.engine.steps import JUNIT
from autopack.plan import parse_plan
from tests.engine.harness import commit_all, drive, make_services, phase, register, submit, view

pytestmark = pytest.mark.sandbox

EXTRA = "=== FILE: calc/extra.py ===\n```python\nEXTRA = 1\n```\n"
APPROVE = '{"verdict": "approve", "summary": "fine", "issues": []}'
ALL_PASSED = '<testsuites><testsuite name="pytest" tests="1"><testcase classname="tests.test_core" name="test_add"/></testsuite></testsuites>'


def _respond(req):  # type: ignore[no-untyped-def]
    return APPROVE if req.system.startswith("You are the Auditor") else EXTRA


def _plan(category: str = "feature", **extra):  # type: ignore[no-untyped-def]
    return parse_plan({"project": "demo", **extra, "tiers": [{"id": "t", "phases": [{
        "id": "extra", "goal": "Add calc/extra.py.", "category": category, "complexity": "low",
        "scope": ["calc/extra.py"], "deliverables": ["calc/extra.py"]}]}]})


def test_a_committed_report_does_not_pass_for_a_run_that_wrote_none(local_settings, demo_repo: Path) -> None:
    # The suite dies while it is collected (no report of its own); the commit carries one that says all passed.
    commit_all(demo_repo, "test setup", {JUNIT: ALL_PASSED, "tests/test_exit.py": "import os\n\nos._exit(0)\n"})
    services, _ = make_services(local_settings, _respond)
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_SETUP"
    assert "baseline tests could not run (the test command wrote no JUnit report)" in v["failure_reason"]


# 800 ids of about 200 bytes: 160 KB, over the 128 KiB Linux allows one argument (fewer, longer
# ids than a real suite's, to keep the five runs of the suite short).
MANY = 800
MANY_TESTS = f'''import os

import pytest


@pytest.mark.parametrize("n", range({MANY}), ids=lambda n: f"case-{{n:05d}}-" + "x" * 170)
def test_many(n):
    assert not os.path.exists("calc/extra.py")
'''


def test_newly_failing_tests_too_many_for_one_command_line_are_rerun_as_the_whole_suite(local_settings, demo_repo: Path) -> None:
    commit_all(demo_repo, "test setup", {"tests/test_many.py": MANY_TESTS})
    services, _ = make_services(local_settings, _respond)
    register(local_settings, demo_repo)
    # No tracebacks: 800 of them would pass the output cap, and a killed run is not re-run.
    quiet = ["{python}", "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    run_id = submit(services, _plan("docs", test_command=quiet))  # 2 attempts
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED", (v["failure_reason"], phase(v, "extra")["attempt_details"][0]["test_summary"])
    attempts = phase(v, "extra")["attempt_details"]
    assert len(attempts) == 2
    for attempt in attempts:
        gate = attempt["gate"]
        assert len(gate["regressions"]) == MANY and gate["flaky"] == [] and not gate["passed"]
        assert attempt["test_summary"] == f"3 error, {MANY} failed, 2 passed"  # the demo's tests of later phases do not import yet
    from autopack.db.models import Attempt
    from autopack.db.session import session_scope

    with session_scope(local_settings.db_url) as s:
        rerun = s.query(Attempt).filter_by(run_id=run_id, number=1).one().test_result["rerun"]
    assert len(rerun["tests"]) == MANY and sum(o == "failed" for o in rerun["outcomes"].values()) == MANY
    assert len(rerun["outcomes"]) > MANY  # the whole suite ran again, the demo's own tests too


# Fills the sandbox's /tmp with 40 MB files once the phase's file exists: each under the file size
# limit and the per-process memory limit, 320 MB in all.
FILL_TMP = '''import os


def test_fill_tmp():
    if os.path.exists("calc/extra.py"):
        for i in range(8):
            with open(f"/tmp/fill{i}", "wb") as f:
                f.write(bytes(40_000_000))
'''


def test_a_suite_over_the_runs_memory_is_a_resource_limit_not_a_worker_problem(local_settings, demo_repo: Path) -> None:
    from autopack.config import load_config
    from autopack.sandbox.cgroups import detect

    if detect("auto") is None:
        pytest.skip("no cgroup per run on this machine (tests/sandbox/test_cgroups.py says why)")
    commit_all(demo_repo, "test setup", {"tests/test_fill.py": FILL_TMP})
    config = load_config(local_settings.config_dir)
    strategy = config.strategy.model_copy(update={"run": config.strategy.run.model_copy(update={"test_memory_mb": 200})})
    services, _ = make_services(local_settings, _respond, config=config.model_copy(update={"strategy": strategy}))
    register(local_settings, demo_repo)
    run_id = submit(services, _plan("docs"))  # 2 attempts
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED", v["failure_reason"]
    attempts = phase(v, "extra")["attempt_details"]
    assert len(attempts) == 2
    for attempt in attempts:
        assert not attempt["gate"]["passed"] and attempt["failure"].startswith("failed: test run killed (memory)")
        assert attempt["classification"] == "sandbox_resource_limit"  # the Builder is told so, the run is not retried as infrastructure
        assert attempt["test_summary"] == "no tests (killed: memory)"


class _KillingSandbox:
    """The real sandbox, except that the runs numbered in ``kill`` come back killed by a SIGTERM
    from outside (a worker being stopped, an operator, the host's OOM reaper)."""

    def __init__(self, kill: set[int] | None = None) -> None:
        from autopack.sandbox.runner import BwrapSandbox

        self.real, self.kill, self.calls = BwrapSandbox(), kill, 0

    def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        import dataclasses

        res = self.real.run(*args, **kwargs)
        self.calls += 1
        if self.calls > 1 and (self.kill is None or self.calls in self.kill):  # call 1 is the baseline
            return dataclasses.replace(res, exit_code=None, killed="signal:SIGTERM", files={})
        return res


def test_a_test_run_killed_from_outside_uses_no_attempt(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _respond)
    services.sandbox = _KillingSandbox({2, 3})  # the first two candidates' runs
    register(local_settings, demo_repo)
    run_id = submit(services, _plan("docs"))  # 2 attempts
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    details = phase(v, "extra")["attempt_details"]
    assert [d["failure_class"] for d in details] == ["infrastructure", "infrastructure", None]
    assert details[0]["classification"] == "infrastructure" and details[0]["doctor"]["burns_attempt"] is False


def test_test_runs_killed_from_outside_are_bounded_by_the_health_budget(local_settings, demo_repo: Path) -> None:
    from autopack.config import load_config

    config = load_config(local_settings.config_dir)
    strategy = config.strategy.model_copy(update={"run": config.strategy.run.model_copy(update={"max_total_failures": 3})})
    services, _ = make_services(local_settings, _respond, config=config.model_copy(update={"strategy": strategy}))
    services.sandbox = _KillingSandbox()  # every candidate's run
    register(local_settings, demo_repo)
    run_id = submit(services, _plan("docs"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_HEALTH_BUDGET" and "failures 4 > 3" in v["failure_reason"]
    assert [d["failure_class"] for d in phase(v, "extra")["attempt_details"]] == ["infrastructure"] * 4
