"""Issues raised by auditors and the gate: recorded per phase, rolled up per run and per project,
de-duplicated across runs; a tier with too many open major issues ends NOT_CLEAN."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autopack.db.session import session_scope
from autopack.engine.issues import backlog, issue_key, run_issues
from autopack.engine.runs import get_project, get_run
from tests.engine.harness import (demo_model, demo_plan, drive, driven_stats_run, make_services, register, require_audit,
                                  required_audit_run, submit, view)

pytestmark = pytest.mark.sandbox


def _auditor_with_issues():  # type: ignore[no-untyped-def]
    good = demo_model()

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Auditor"):
            phase = re.search(r"^# Review of phase (\S+):", req.messages[0].content, re.MULTILINE).group(1)
            return json.dumps({"verdict": "approve", "summary": "acceptable", "issues": [
                {"severity": "major", "summary": f"no docstring on the public functions ({phase})", "path": f"calc/{phase}.py"},
                {"severity": "minor", "summary": "naming could be clearer", "path": f"calc/{phase}.py"}]})
        return good(req)

    return respond


def _services(local_settings, **run_updates):  # type: ignore[no-untyped-def]
    services, _ = make_services(local_settings, _auditor_with_issues())
    if run_updates:
        rb = services.config.strategy.run.model_copy(update=run_updates)
        services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"run": rb})})
    return services


def test_issues_roll_up_and_deduplicate_across_runs(local_settings, demo_repo: Path) -> None:
    services = _services(local_settings)
    register(local_settings, demo_repo)
    runs = []
    for _ in range(2):
        run_id = submit(services, demo_plan())
        drive(services, ("start_run", run_id))
        runs.append(view(services, run_id))
    first = runs[0]
    assert first["state"] == "DONE_SUCCESS"
    # core: stats + parse each leave 1 open major issue (2 <= threshold 2): the tier is clean.
    assert [t["state"] for t in first["tiers"]] == ["COMPLETE", "COMPLETE"]
    with session_scope(local_settings.db_url) as s:
        ri = run_issues(s, get_run(s, first["id"]))
        assert ri["open"] == {"major": 3, "minor": 3}
        assert sorted(i["phases"][0] for i in ri["issues"] if i["severity"] == "major") == ["cli", "parse", "stats"]
        bl = backlog(s, get_project(s, "demo"))
    assert bl["open"] == 6 and bl["by_severity"] == {"major": 3, "minor": 3}
    assert all(i["count"] == 2 for i in bl["issues"])  # the same issues in both runs: counted, not duplicated
    assert all(i["age_days"] >= 0 and i["first_seen"] <= i["last_seen"] for i in bl["issues"])
    key = issue_key("auditor", "no docstring on the public functions (stats)", "calc/stats.py")
    assert key in {i["key"] for i in bl["issues"]}


def test_a_tier_over_its_threshold_is_not_clean(local_settings, demo_repo: Path) -> None:
    services = _services(local_settings, tier_major_issue_threshold=1)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS" and [t["state"] for t in v["tiers"]] == ["NOT_CLEAN", "COMPLETE"]


def test_not_clean_can_stop_the_run(local_settings, demo_repo: Path) -> None:
    services = _services(local_settings, tier_major_issue_threshold=1, on_not_clean="stop")
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED" and "not clean: 2 open major issues" in v["failure_reason"]
    assert [t["state"] for t in v["tiers"]] == ["NOT_CLEAN", "PENDING"]


def _rejects_once_with(text: str):  # type: ignore[no-untyped-def]
    """A right ``stats``; a required audit that first rejects with ``text`` (raw JSON escapes), then approves."""
    good = demo_model()
    audits = {"n": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            audits["n"] += 1
            if audits["n"] == 1:
                return '{"verdict": "reject", "summary": "%s", "issues": [{"severity": "major", "summary": "%s"}]}' % (text, text)
        if req.system.startswith("You are the Doctor"):
            return '{"action": "retry_with_fix", "hint": "h", "confidence": 0.9, "reason": "r"}'
        return good(req)

    return respond


def test_a_lone_surrogate_in_an_auditor_objection_is_recorded(local_settings, demo_repo: Path) -> None:
    """Valid JSON, "\\ud83d" is half of an emoji's escape: it cannot be encoded, so the issue's key,
    the feedback and the summary get a replacement character instead (the step does not crash)."""
    services, run_id = required_audit_run(local_settings, _rejects_once_with("bad \\ud83d"), demo_repo)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    with session_scope(local_settings.db_url) as s:
        assert [i["summary"] for i in run_issues(s, get_run(s, run_id))["issues"]] == ["bad \ufffd"]


def test_a_nul_in_an_auditor_objection_is_recorded_on_postgres(pg_url: str, tmp_path: Path, demo_repo: Path) -> None:
    """PostgreSQL's text columns cannot hold NUL: a "\\u0000" (valid JSON) is dropped from the answer."""
    from tests.engine.harness import on_postgres

    settings, _ = on_postgres(pg_url, tmp_path, demo_repo)
    services, _ = make_services(settings, _rejects_once_with("a \\u0000 b"))
    require_audit(services)
    run_id = driven_stats_run(services)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    with session_scope(settings.db_url) as s:
        assert [i["summary"] for i in run_issues(s, get_run(s, run_id))["issues"]] == ["a  b"]


# -- an issue the retry fixed, severity per run, distinct issues, re-audits ---------------------------


def test_an_issue_the_retry_fixed_is_not_open_in_the_backlog(local_settings, demo_repo: Path) -> None:
    services, run_id = required_audit_run(local_settings, _rejects_once_with("median is wrong for even lengths"), demo_repo)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    with session_scope(local_settings.db_url) as s:
        ri = run_issues(s, get_run(s, run_id))
        bl = backlog(s, get_project(s, "demo"))
    # The run itself says: seen, not open (the retry fixed it).
    assert ri["open"] == {"major": 0, "minor": 0}
    assert [i["open_in_run"] for i in ri["issues"]] == [False]
    # The project's backlog must agree.
    assert bl["open"] == 0, bl["issues"]


def _auditor(issues_by_run: list[list[dict]]):  # type: ignore[no-untyped-def]
    """Builder right first time; the n-th run's (approving) audit raises ``issues_by_run[n]``."""
    good = demo_model()
    audits = {"n": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            found = issues_by_run[min(audits["n"], len(issues_by_run) - 1)]
            audits["n"] += 1
            return json.dumps({"verdict": "approve", "summary": "ok", "issues": found})
        return good(req)

    return respond


def _threshold(services, n: int) -> None:  # type: ignore[no-untyped-def]
    rb = services.config.strategy.run.model_copy(update={"tier_major_issue_threshold": n})
    services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"run": rb})})


def test_a_minor_issue_in_this_run_is_not_counted_major_because_another_run_said_major(local_settings, demo_repo: Path) -> None:
    issue = {"summary": "naming could be clearer", "path": "calc/stats.py"}
    services, _ = make_services(local_settings, _auditor([[{**issue, "severity": "major"}], [{**issue, "severity": "minor"}]]))
    _threshold(services, 0)
    register(local_settings, demo_repo)
    first = driven_stats_run(services)
    second = driven_stats_run(services)
    assert [t["state"] for t in view(services, first)["tiers"]] == ["NOT_CLEAN"]  # a major issue: right
    with session_scope(local_settings.db_url) as s:
        ri = run_issues(s, get_run(s, second))
    # The second run's auditor called it minor: the run has no open major issue, its tier is clean.
    assert ri["open"] == {"major": 0, "minor": 1}
    assert [t["state"] for t in view(services, second)["tiers"]] == ["COMPLETE"]


def test_two_different_major_issues_of_one_file_are_not_merged(local_settings, demo_repo: Path) -> None:
    found = [{"severity": "major", "summary": "no authentication on /admin/delete_user", "path": "calc/stats.py"},
             {"severity": "major", "summary": "no authentication on /api/export", "path": "calc/stats.py"},
             {"severity": "major", "summary": "mean() returns 0 for an empty list, expected to raise", "path": "calc/stats.py"},
             {"severity": "major", "summary": "mean() returns 1 for an empty list, expected to raise", "path": "calc/stats.py"}]
    services, _ = make_services(local_settings, _auditor([found]))
    _threshold(services, 3)
    register(local_settings, demo_repo)
    run_id = driven_stats_run(services)
    with session_scope(local_settings.db_url) as s:
        ri = run_issues(s, get_run(s, run_id))
    assert len(ri["issues"]) == 4, [i["summary"] for i in ri["issues"]]
    assert [t["state"] for t in view(services, run_id)["tiers"]] == ["NOT_CLEAN"]  # 4 open majors > 3


def test_a_reaudit_does_not_count_its_builds_issues_twice(local_settings, demo_repo: Path, monkeypatch) -> None:
    """The required auditor is out on the first review; the re-audit (a new attempt holding the same
    candidate, built once) approves. The one refused edit of that one build is one occurrence."""
    from autopack.errors import ProviderUnavailable

    good = demo_model()
    out = {"first_review": True}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            if "outside the phase scope" in req.messages[-1].content:  # the fix round: the refusal was fed back
                return good.__globals__["STATS"]
            return good.__globals__["STATS"] + "\n=== FILE: notes/outside.txt ===\n```\nnot in scope\n```\n"
        if req.system.startswith("You are the Auditor"):
            if out["first_review"]:
                raise ProviderUnavailable("anthropic", "overloaded", 529)
            return json.dumps({"verdict": "approve", "summary": "ok", "issues": []})
        return good(req)

    services, _ = make_services(local_settings, respond)
    require_audit(services)
    routing = services.config.strategy.run.routing.model_copy(update={"outage_cooldown_s": 0, "backoff_base_s": 0.01, "backoff_cap_s": 0.01})
    rb = services.config.strategy.run.model_copy(update={"routing": routing})
    services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"run": rb})})
    register(local_settings, demo_repo)

    from autopack.engine import steps
    real = steps._reaudit

    def reaudit(*args):  # type: ignore[no-untyped-def]
        out["first_review"] = False
        return real(*args)

    monkeypatch.setattr(steps, "_reaudit", reaudit)  # only to know when the auditor is back
    run_id = driven_stats_run(services)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    details = [p for t in v["tiers"] for p in t["phases"]][0]["attempt_details"]
    assert len(details) == 2 and details[0]["commit"] == details[1]["commit"]  # one build, reviewed twice
    with session_scope(local_settings.db_url) as s:
        ri = run_issues(s, get_run(s, run_id))
    refused = [i for i in ri["issues"] if i["source"] == "builder"]
    assert len(refused) == 1
    assert refused[0]["in_run"] == 1 and refused[0]["count"] == 1, refused[0]
