"""The phase pipeline on real git, a real sandbox and SQLite, with a scripted model."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from autopack.db.models import Attempt, Event, ModelCall, Run
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.llm.base import LLMResponse, Usage
from autopack.workspace.git import Git
from autopack.workspace.worktree import branch_log
from tests.engine.harness import (call_step, demo_model, demo_plan, drive, driven_stats_run, make_services, phase, register,
                                  require_audit, submit, view)

pytestmark = pytest.mark.sandbox


def test_demo_plan_completes_with_one_commit_per_phase(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    base_before = Git(demo_repo).rev_parse("refs/heads/main")
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))

    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert [(p["id"], p["state"], p["attempts"]) for t in v["tiers"] for p in t["phases"]] == [
        ("stats", "COMPLETE", 2),
        ("parse", "COMPLETE", 2),
        ("cli", "COMPLETE", 1),
    ]
    # The base branch is never written; the run's branch holds exactly one commit per phase.
    assert Git(demo_repo).rev_parse("refs/heads/main") == base_before
    log = branch_log(demo_repo, "main", v["branch"])
    assert [e["trailers"]["Autopack-Phase"] for e in log] == ["stats", "parse", "cli"]
    assert all(e["trailers"]["Autopack-Run"] == run_id for e in log)
    assert [e["trailers"]["Autopack-Attempt"] for e in log] == ["2", "2", "1"]
    assert log[-1]["sha"] == v["head_commit"] == Git(demo_repo).rev_parse(f"refs/heads/{v['branch']}")

    # The retried phases: the first attempt failed the gate on its acceptance test; the retry
    # prompt carried the failure.
    first, second = phase(v, "parse")["attempt_details"]
    assert first["decision"] == "retry" and first["failure_class"] == "test_failure"
    assert first["gate"]["acceptance_failed"] == ["tests/test_parse.py::test_bad_token_is_named"]
    assert second["decision"] == "complete" and second["gate"]["passed"]
    retry_prompts = [c for c in client.calls if "## The previous attempt failed" in c.messages[0].content]
    assert len(retry_prompts) == 2
    assert "test_bad_token_is_named" in retry_prompts[1].messages[0].content
    assert "DID NOT RAISE" in retry_prompts[0].messages[0].content

    # Usage is accounted per call and per run, and nothing stays reserved.
    with session_scope(local_settings.db_url) as s:
        run = s.get(Run, run_id)
        calls = s.scalars(select(ModelCall).where(ModelCall.run_id == run_id)).all()
        assert run is not None and run.tokens_reserved == 0 and abs(run.cost_reserved_usd) < 1e-9
        assert run.tokens_used == sum(c.input_tokens + c.output_tokens for c in calls) > 0
        assert {c.role for c in calls} == {"builder", "auditor"}
        seqs = s.scalars(select(Event.seq).where(Event.run_id == run_id).order_by(Event.seq)).all()
        assert seqs == list(range(1, len(seqs) + 1))


def test_retrying_a_finished_step_changes_nothing(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    steps = drive(services, ("start_run", run_id))
    before = view(services, run_id)
    with session_scope(local_settings.db_url) as s:
        events_before = s.scalar(select(func.count()).select_from(Event))
    # A new delivery of every step already done (a fresh step row, as a duplicate message
    # would find) is a no-op.
    for name, arg in steps:
        assert call_step(services, run_id, name, int(arg) if name in ("build", "probe", "audit", "decide") else arg) == []
    assert view(services, run_id) == before
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == events_before


def _text(text: str, stop: str = "end") -> LLMResponse:
    return LLMResponse(text=text, stop_reason=stop, usage=Usage(input_tokens=10, output_tokens=10), model="m", provider="scripted")


def test_malformed_edit_is_fed_back_without_consuming_an_attempt(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    seen: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        first = req.messages[0].content
        if req.system.startswith("You are the Builder") and "# Phase stats" in first:
            if len(req.messages) == 1:
                seen.append("malformed")
                return "calc/stats.py\n<<<<<<< SEARCH\n=======\nx = 1\n"  # never terminated
            return good.__globals__["STATS"]
        return good(req)

    services, client = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS"
    stats = phase(v, "stats")
    assert stats["attempts"] == 1
    rounds = stats["attempt_details"][0]["edit_rounds"]
    assert [r["outcome"] for r in rounds] == ["parse_error", "ok"]
    fix_call = next(c for c in client.calls if len(c.messages) == 3 and "# Phase stats" in c.messages[0].content)
    assert "could not be used" in fix_call.messages[2].content
    assert rounds[0]["error"] in fix_call.messages[2].content


def test_truncated_answer_is_retried_once_with_a_larger_limit(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    limits: list[int] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder") and "# Phase stats" in req.messages[0].content:
            limits.append(req.max_tokens)
            if len(limits) == 1:
                return _text("=== FILE: calc/stats.py ===\n```python\ndef mean(values):\n    return sum(", "max_tokens")
            return good.__globals__["STATS"]
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS"
    assert limits == [limits[0], 2 * limits[0]]
    rounds = phase(v, "stats")["attempt_details"][0]["edit_rounds"]
    assert [r["outcome"] for r in rounds] == ["truncated", "ok"]
    assert Git(demo_repo).read_blob(v["head_commit"], "calc/stats.py").count("def mean") == 1


def test_an_answer_the_provider_stopped_is_never_applied(local_settings, demo_repo: Path) -> None:
    """A Builder answer stopped by the provider (a refusal, a content filter) may hold edits, but
    not the finished ones: nothing of it is applied, and the retry builds the phase."""
    good = demo_model()
    builds = {"n": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder") and "# Phase stats" in req.messages[0].content:
            builds["n"] += 1
            if builds["n"] == 1:
                return _text("=== FILE: calc/stats.py ===\n```python\nBROKEN = 1\n```\n", "refusal")
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = phase(v, "stats")["attempt_details"][0]
    assert first["commit"] is None and "stopped by the provider (refusal)" in first["failure"]
    assert [r["outcome"] for r in first["edit_rounds"]] == ["truncated"]
    assert "BROKEN" not in Git(demo_repo).read_blob(v["head_commit"], "calc/stats.py")


def test_an_auditor_answer_the_provider_stopped_is_no_approval(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _first_audit_then_approve(_text(APPROVE, "content_filter")))
    require_audit(services)
    register(local_settings, demo_repo)
    v = view(services, driven_stats_run(services))
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = phase(v, "stats")["attempt_details"][0]
    assert first["audit"]["verdict"] == "invalid" and "stopped it before its end (content_filter)" in first["audit"]["summary"]
    assert first["decision"] == "retry"


def test_phase_fails_after_its_attempts_and_the_run_ends_tier_blocked(local_settings, demo_repo: Path) -> None:
    good = demo_model()

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Planner"):
            return '{"goal": "Add calc/parse.py; raise ValueError on bad tokens.", "approach": "Raise, do not skip."}'
        if req.system.startswith("You are the Builder") and "# Phase parse" in req.messages[0].content:
            return good.__globals__["PARSE_WRONG"]  # the same wrong answer, every time
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED"
    assert "parse" in v["failure_reason"]
    parse = phase(v, "parse")
    assert parse["state"] == "FAILED" and parse["attempts"] == parse["max_attempts"] == 3
    assert [a["decision"] for a in parse["attempt_details"]] == ["retry", "retry", "fail"]
    assert phase(v, "cli")["state"] == "QUEUED"
    assert [t["state"] for t in v["tiers"]] == ["BLOCKED", "PENDING"]
    # Only the completed phase reached the branch.
    assert [e["trailers"]["Autopack-Phase"] for e in branch_log(demo_repo, "main", v["branch"])] == ["stats"]


def test_token_cap_stops_the_run_before_the_call(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, demo_model())
    strategy = services.config.strategy.model_copy(update={"run": services.config.strategy.run.model_copy(update={"token_cap": 3000})})
    services.config = services.config.model_copy(update={"strategy": strategy})
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TOKEN_CAP_EXCEEDED"
    assert "token cap 3000" in v["failure_reason"]
    with session_scope(local_settings.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None and run.tokens_used + run.tokens_reserved <= run.token_cap
        assert run.tokens_reserved == 0
    assert len(client.calls) == 0  # the first Builder prompt alone does not fit in 3000 tokens


def test_cancel_stops_the_pipeline(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    nxt = call_step(services, run_id, "start_run", run_id)
    nxt = call_step(services, run_id, "baseline", nxt[0][1])
    assert nxt and nxt[0][0] == "build"
    with session_scope(local_settings.db_url) as s:
        runsvc.cancel_run(s, run_id)
    assert call_step(services, run_id, "build", nxt[0][1]) == []
    assert view(services, run_id)["state"] == "CANCELLED"
    assert client.calls == []


def test_regression_blocks_and_is_named(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    breaking = (
        "calc/core.py\n```python\n<<<<<<< SEARCH\ndef add(a: float, b: float) -> float:\n    return a + b\n"
        "=======\ndef add(a: float, b: float) -> float:\n    return a - b\n>>>>>>> REPLACE\n```\n\n" + good.__globals__["STATS"]
    )

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder") and "# Phase stats" in req.messages[0].content:
            return breaking if "previous attempt failed" not in req.messages[0].content else good(req)
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    plan = demo_plan(stats={"scope": ["calc/stats.py", "calc/core.py"]})
    run_id = submit(services, plan)
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS"
    first = phase(v, "stats")["attempt_details"][0]
    assert first["failure_class"] == "regression"
    assert first["gate"]["regressions"] == ["tests/test_core.py::test_add"]
    assert first["gate"]["flaky"] == []
    with session_scope(local_settings.db_url) as s:
        a = s.scalar(select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.id))
        assert a is not None and a.test_result["rerun"]["outcomes"]["tests/test_core.py::test_add"] == "failed"


def test_a_baseline_that_cannot_run_stops_the_run_before_any_model_call(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    plan = demo_plan().model_copy(update={"test_command": ["/nonexistent/python", "-m", "pytest"]})
    run_id = submit(services, plan)
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_SETUP"
    assert "baseline tests could not run" in v["failure_reason"] and "JUnit" in v["failure_reason"]
    assert client.calls == []


def test_the_phase_cost_cap_stops_the_run_before_the_call(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, demo_model())
    strategy = services.config.strategy.model_copy(deep=True)
    strategy.categories["feature"] = {"cost_cap_usd": 0.001}
    services.config = services.config.model_copy(update={"strategy": strategy})
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert v["failure_reason"].startswith("phase stats: phase cost cap $0.00 reached")
    assert client.calls == []


APPROVE = '{"verdict": "approve", "summary": "looks right", "issues": []}'
RETRY = '{"action": "retry_with_fix", "hint": "h", "confidence": 0.9, "reason": "r"}'


def _first_audit_then_approve(first_answer: str):  # type: ignore[no-untyped-def]
    """The demo's right ``stats`` from the Builder; the Auditor answers ``first_answer`` once, then approves."""
    good = demo_model()
    audits = {"n": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            audits["n"] += 1
            return first_answer if audits["n"] == 1 else APPROVE
        if req.system.startswith("You are the Doctor"):
            return RETRY
        return good(req)

    return respond


def test_an_approval_that_lists_a_major_issue_does_not_pass_a_required_audit(local_settings, demo_repo: Path) -> None:
    import json

    contradiction = json.dumps({"verdict": "approve", "summary": "fine", "issues": [
        {"severity": "major", "summary": "median() deletes the caller's data", "path": "calc/stats.py"}]})
    services, _ = make_services(local_settings, _first_audit_then_approve(contradiction))
    require_audit(services)
    register(local_settings, demo_repo)
    v = view(services, driven_stats_run(services))
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = phase(v, "stats")["attempt_details"][0]
    assert first["decision"] == "retry" and first["audit"]["approved"] is False
    assert "median() deletes the caller's data" in first["failure"]


def test_a_truncated_auditor_answer_is_no_approval(local_settings, demo_repo: Path) -> None:
    """The Auditor restates the format (an approving example), reasons at length and is cut off at
    max_tokens before its own verdict: no verdict, whatever object the cut answer holds."""
    reasoning = "Reviewing the change line by line. " * 200  # ~7,000 characters: past 1,500 tokens
    cut = ('I must answer like {"verdict": "approve", "summary": "...", "issues": []} or with a rejection.\n'
           + reasoning + '\n{"verdict": "reject", "summary": "median is wrong", "issues": []}')
    services, client = make_services(local_settings, _first_audit_then_approve(cut))
    require_audit(services)
    register(local_settings, demo_repo)
    v = view(services, driven_stats_run(services))
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = phase(v, "stats")["attempt_details"][0]
    assert first["audit"]["verdict"] == "invalid" and "cut off at the token limit" in first["audit"]["summary"]
    assert first["decision"] == "retry"


def _events_after_cancel(local_settings, run_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    with session_scope(local_settings.db_url) as s:
        types = [e["type"] for e in runsvc.list_events(s, run_id)]
    return types[types.index("run.cancelled") + 1:]


def test_a_probe_in_flight_when_the_run_is_cancelled_records_nothing(local_settings, demo_repo: Path) -> None:
    from autopack.sandbox.runner import BwrapSandbox

    holder: dict[str, str] = {}

    class CancellingSandbox(BwrapSandbox):
        calls = 0

        def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            res = super().run(*args, **kwargs)
            self.calls += 1
            if self.calls == 2:  # the first candidate's tests (call 1 is the baseline)
                with session_scope(local_settings.db_url) as s:
                    runsvc.cancel_run(s, holder["run_id"])
            return res

    services, _ = make_services(local_settings, demo_model())
    services.sandbox = CancellingSandbox()
    register(local_settings, demo_repo)
    holder["run_id"] = run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    assert view(services, run_id)["state"] == "CANCELLED"
    assert "attempt.tested" not in _events_after_cancel(local_settings, run_id)
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(Attempt.test_result).where(Attempt.run_id == run_id)) is None


def test_an_audit_in_flight_when_the_run_is_cancelled_records_nothing(local_settings, demo_repo: Path) -> None:
    holder: dict[str, str] = {}
    good = demo_model()

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            with session_scope(local_settings.db_url) as s:
                runsvc.cancel_run(s, holder["run_id"])
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    holder["run_id"] = run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    assert view(services, run_id)["state"] == "CANCELLED"
    assert "attempt.audited" not in _events_after_cancel(local_settings, run_id)
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(Attempt.audit).where(Attempt.run_id == run_id)) is None
