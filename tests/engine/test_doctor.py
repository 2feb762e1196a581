"""The Doctor on real runs: a repeated failure of a kind the rules do not settle goes to the cheap
Doctor model (the strong one when it is unsure), and its action is carried out and recorded on the
attempt: retry with its hint, skip the phase, mark it fatal, roll the run back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from autopack import postmortem
from autopack.config import load_config
from autopack.db.models import ModelCall
from autopack.db.session import session_scope
from autopack.engine.issues import run_issues
from autopack.engine.runs import get_run, list_events
from autopack.plan import parse_plan
from autopack.workspace.git import Git
from web.schemas import RunOut
from tests.engine.harness import demo_model, demo_plan, drive, make_services, phase, register, submit, view

pytestmark = pytest.mark.sandbox

# A second wrong parser: it fails the tests differently from the model's PARSE_WRONG, so the two
# failures are of one kind but not alike (no similarity re-plan) and the rules leave it to the Doctor.
PARSE_EMPTY = '''=== FILE: calc/parse.py ===
```python
"""Parsing numbers from text."""


def parse_numbers(text: str) -> list[float]:
    return []
```
'''


def _doctor_json(action: str, confidence: float, hint: str = "", reason: str = "because") -> str:
    return json.dumps({"action": action, "hint": hint, "confidence": confidence, "reason": reason})


class Script:
    """The demo model, with a parse phase that fails twice in two different ways and a Doctor whose
    answers come from ``doctor`` (model name -> answer)."""

    def __init__(self, doctor: dict[str, str], fix_on_advice: str | None = None) -> None:
        self.good = demo_model()
        self.doctor = doctor
        self.fix_on_advice = fix_on_advice
        self.doctor_prompts: list[tuple[str, str]] = []
        self.parse_builds = 0

    def __call__(self, req: Any) -> str:
        g = self.good.__globals__
        if req.system.startswith("You are the Doctor"):
            self.doctor_prompts.append((req.model, req.messages[0].content))
            return self.doctor[req.model]
        if req.system.startswith("You are the Builder") and "# Phase parse" in req.messages[0].content:
            self.parse_builds += 1
            if self.fix_on_advice and self.fix_on_advice in req.messages[0].content:
                return g["PARSE_FIXED"]
            return g["PARSE_WRONG"] if self.parse_builds % 2 else PARSE_EMPTY
        return self.good(req)


def _run(local_settings, demo_repo: Path, script: Script, plan=None, config=None) -> tuple[dict[str, Any], str]:  # type: ignore[no-untyped-def]
    services, _ = make_services(local_settings, script, config)
    register(local_settings, demo_repo)
    run_id = submit(services, plan or demo_plan())
    drive(services, ("start_run", run_id))
    return view(services, run_id), run_id


def _events(settings, run_id: str, kind: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with session_scope(settings.db_url) as s:
        return [{"phase": e["phase"], **e["payload"]} for e in list_events(s, run_id) if e["type"] == kind]


def test_retry_with_the_doctors_hint(local_settings, demo_repo: Path) -> None:
    advice = "Raise ValueError naming the bad token instead of returning an empty list."
    script = Script({"claude-haiku-4-5": _doctor_json("retry_with_fix", 0.9, advice, "the parser ignores bad tokens")},
                    fix_on_advice="The Doctor's advice: " + advice)
    v, run_id = _run(local_settings, demo_repo, script)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    attempts = phase(v, "parse")["attempt_details"]
    assert [a["decision"] for a in attempts] == ["retry", "retry", "complete"]
    first, second = attempts[0]["doctor"], attempts[1]["doctor"]
    # The first failure of a kind is the rules' call: retry, no model asked.
    assert first["source"] == "rules" and first["action"] == "retry_with_fix" and first["calls"] == []
    assert attempts[0]["classification"] == "test_failure"
    # The second is the Doctor's: cheap model, confident, its hint reaches the Builder.
    assert second["source"] == "model" and second["action"] == "retry_with_fix" and second["hint"] == advice
    assert second["calls"] == [{"model": "claude-haiku-4-5", "action": "retry_with_fix", "confidence": 0.9}]
    assert attempts[2]["doctor"] is None and attempts[2]["classification"] is None
    assert len(script.doctor_prompts) == 1
    prompt = script.doctor_prompts[0][1]
    assert "# Phase parse (parsing)" in prompt and "Attempts used: 2 of 3" in prompt and "DID NOT RAISE" in prompt
    diagnosed = _events(local_settings, run_id, "attempt.diagnosed")
    # stats fails once (the demo model's planted mistake), parse twice.
    assert [(d["phase"], d["source"]) for d in diagnosed] == [("stats", "rules"), ("parse", "rules"), ("parse", "model")]
    with session_scope(local_settings.db_url) as s:
        roles = [c.role for c in s.scalars(select(ModelCall).where(ModelCall.role == "doctor"))]
    assert roles == ["doctor"]
    RunOut.model_validate(v)


def test_an_unsure_doctor_escalates_and_the_strong_one_skips_the_phase(local_settings, demo_repo: Path) -> None:
    data = demo_plan().model_dump()
    data["tiers"] = data["tiers"][:1]  # nothing after parse depends on it
    script = Script({"claude-haiku-4-5": _doctor_json("retry_with_fix", 0.3, "maybe try again"),
                     "claude-sonnet-4-6": _doctor_json("skip_phase", 0.95, reason="parsing is optional for this release")})
    v, run_id = _run(local_settings, demo_repo, script, parse_plan(data))
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    ph = phase(v, "parse")
    assert ph["state"] == "SKIPPED" and ph["attempts"] == 2 and ph["commit"] is None
    doc = ph["attempt_details"][1]["doctor"]
    assert doc["action"] == "skip_phase" and doc["source"] == "model" and doc["reason"] == "parsing is optional for this release"
    assert [c["model"] for c in doc["calls"]] == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    assert [m for m, _ in script.doctor_prompts] == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    assert ph["attempt_details"][1]["decision"] == "skip_phase"
    assert _events(local_settings, run_id, "phase.skipped")[0]["reason"] == "parsing is optional for this release"


def test_mark_fatal_ends_the_run_and_is_an_issue(local_settings, demo_repo: Path) -> None:
    script = Script({"claude-haiku-4-5": _doctor_json("mark_fatal", 0.9, reason="the tests contradict the goal")})
    v, run_id = _run(local_settings, demo_repo, script)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED"
    assert v["failure_reason"] == "phase parse: the Doctor chose mark_fatal: the tests contradict the goal"
    assert phase(v, "parse")["state"] == "FAILED" and phase(v, "parse")["attempts"] == 2
    assert phase(v, "cli")["state"] == "QUEUED"
    with session_scope(local_settings.db_url) as s:
        found = run_issues(s, get_run(s, run_id))["issues"]
        run = get_run(s, run_id)
        markdown = postmortem.render(postmortem.collect_facts(s, run))
    doctor_issues = [i for i in found if i["source"] == "doctor"]
    assert len(doctor_issues) == 1 and doctor_issues[0]["severity"] == "major" and doctor_issues[0]["open_in_run"]
    assert "mark_fatal" in doctor_issues[0]["summary"] and "contradict" in doctor_issues[0]["summary"]
    # The postmortem tells what was decided about each failure, and keeps the issue open.
    assert "test_failure → retry_with_fix by rules" in markdown
    assert "test_failure → mark_fatal by model: the tests contradict the goal" in markdown
    assert "- [major] doctor: mark_fatal: the tests contradict the goal (phases parse)" in markdown


def test_rollback_moves_the_branch_back_to_the_base(local_settings, demo_repo: Path) -> None:
    script = Script({"claude-haiku-4-5": _doctor_json("rollback_run", 0.9, reason="stats broke the package")})
    v, run_id = _run(local_settings, demo_repo, script)
    assert v["state"] == "DONE_FAILED_ROLLED_BACK"
    assert phase(v, "stats")["state"] == "COMPLETE" and phase(v, "stats")["commit"]
    git = Git(demo_repo)
    assert git.rev_parse(f"refs/heads/{v['branch']}") == v["base_commit"] == v["head_commit"]
    # The completed phase's commit is kept under the run's refs: nothing is lost.
    accepted = phase(v, "stats")["attempt_details"][-1]
    assert git.rev_parse(f"refs/autopack/{run_id}/stats/{accepted['number']}") == phase(v, "stats")["commit"]
    assert _events(local_settings, run_id, "run.rolled_back")[0]["commit"] == v["base_commit"]


def test_the_doctors_call_budget_and_unusable_answers(local_settings, demo_repo: Path) -> None:
    cfg = load_config(local_settings.config_dir)
    strategy = cfg.strategy.model_copy(deep=True)
    strategy.categories["parsing"] = {"max_attempts": 4}
    strategy.run.doctor.max_calls_per_phase = 1
    config = cfg.model_copy(update={"strategy": strategy})
    data = demo_plan().model_dump()
    data["tiers"] = data["tiers"][:1]
    script = Script({"claude-haiku-4-5": "I think you should retry.", "claude-sonnet-4-6": "unused"})
    v, _ = _run(local_settings, demo_repo, script, parse_plan(data), config)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED"
    attempts = phase(v, "parse")["attempt_details"]
    assert len(attempts) == 4
    second, third = attempts[1]["doctor"], attempts[2]["doctor"]
    # An answer that is no decision is recorded and the phase retries with the failure as feedback.
    assert second["action"] == "retry_with_fix" and second["calls"][0]["model"] == "claude-haiku-4-5"
    assert "no JSON object" in second["calls"][0]["error"] and second["reason"].startswith("the Doctor gave no usable answer")
    # One call per phase: the next diagnosis is the default without asking.
    assert third["calls"] == [] and third["reason"].startswith("the Doctor's call budget is spent")
    assert attempts[3]["doctor"]["action"] == "fail"
    assert len(script.doctor_prompts) == 1


def test_a_truncated_doctor_answer_is_no_decision(local_settings, demo_repo: Path) -> None:
    """The cheap Doctor's answer is cut off at its max_tokens after an example object: that object
    is not its decision; the strong model is asked instead."""
    data = demo_plan().model_dump()
    data["tiers"] = data["tiers"][:1]
    cut = "I could answer " + _doctor_json("skip_phase", 0.99, reason="example") + " but first: " + "thinking. " * 400
    advice = "Raise ValueError naming the bad token instead of returning an empty list."
    script = Script({"claude-haiku-4-5": cut, "claude-sonnet-4-6": _doctor_json("retry_with_fix", 0.9, advice)},
                    fix_on_advice="The Doctor's advice: " + advice)
    v, _ = _run(local_settings, demo_repo, script, parse_plan(data))
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    ph = phase(v, "parse")
    assert ph["state"] == "COMPLETE"
    doc = ph["attempt_details"][1]["doctor"]
    assert doc["action"] == "retry_with_fix" and doc["hint"] == advice
    assert "cut off at the token limit" in doc["calls"][0]["error"] and doc["calls"][1]["model"] == "claude-sonnet-4-6"


def test_a_cancel_during_the_doctors_rollback_leaves_the_branch_with_the_completed_phases(
        local_settings, demo_repo: Path, monkeypatch) -> None:
    """decide moved the branch back to the base for the Doctor's rollback_run; the user cancels the
    run before decide records it. The run ends CANCELLED with its completed phases recorded (head
    at stats' commit), so its branch must still hold them, as take_back_ref_move does for a
    completed phase."""
    from autopack.engine import steps
    from autopack.engine.runs import cancel_run

    script = Script({"claude-haiku-4-5": _doctor_json("rollback_run", 0.9, reason="stats broke the package")})
    services, _ = make_services(local_settings, script)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    real = steps.crash_point

    def hook(name: str) -> None:
        real(name)
        if name != "after_ref_moved":
            return
        with session_scope(local_settings.db_url) as s:
            run = get_run(s, run_id)
            if Git(demo_repo).rev_parse(f"refs/heads/{run.branch}") == run.base_commit != run.head_commit:
                cancel_run(s, run_id)  # the user's POST /runs/<id>/cancel lands now

    monkeypatch.setattr(steps, "crash_point", hook)
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "CANCELLED"
    stats = [p for t in v["tiers"] for p in t["phases"] if p["id"] == "stats"][0]
    assert stats["state"] == "COMPLETE" and v["head_commit"] == stats["commit"] != v["base_commit"]
    # The database says the branch holds stats; git must agree.
    assert Git(demo_repo).rev_parse(f"refs/heads/{v['branch']}") == v["head_commit"]
