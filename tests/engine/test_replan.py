"""A phase whose model keeps answering with the same failing edit is re-planned once, then ends
with a clear terminal reason: it never loops."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.replan import Failure, ReplanError, fatal_type, parse_replan, should_replan, should_replan_now
from tests.engine.harness import demo_model, demo_plan, drive, make_services, phase, register, required_audit_run, submit, view

pytestmark = pytest.mark.sandbox

NEW_GOAL = "Add calc/parse.py whose parse_numbers raises ValueError naming any token that is not a number."


def test_same_failure_is_replanned_once_then_the_run_ends(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    planner_prompts: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Planner"):
            planner_prompts.append(req.messages[0].content)
            return '{"goal": "%s", "approach": "Raise instead of skipping."}' % NEW_GOAL
        if req.system.startswith("You are the Builder") and "# Phase parse" in req.messages[0].content:
            return good.__globals__["PARSE_WRONG"]  # the same failing edit, every time
        return good(req)

    services, client = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_TIER_BLOCKED"
    assert v["failure_reason"].startswith("phase parse failed: test gate") and "attempt 3 of 3" in v["failure_reason"]
    ph = phase(v, "parse")
    assert ph["state"] == "FAILED" and ph["attempts"] == 3 and ph["replans"] == 1
    assert ph["goal"] == NEW_GOAL
    assert len(ph["plan_history"]) == 1 and ph["plan_history"][0]["replaced_after_attempt"] == 2
    assert "failed the same way (test_failure" in ph["plan_history"][0]["reason"]
    assert len(planner_prompts) == 1 and "DID NOT RAISE" in planner_prompts[0]
    builder = [c.messages[0].content for c in client.calls if c.system.startswith("You are the Builder") and "# Phase parse" in c.messages[0].content]
    assert len(builder) == 3 and f"# Phase parse: {NEW_GOAL}" in builder[2] and NEW_GOAL not in builder[1]


def test_a_run_replans_by_the_settings_it_was_submitted_with(local_settings, demo_repo: Path) -> None:
    """The strategy is fixed when a run is submitted: an operator who then turns re-planning off
    (max_replans 0) and the Doctor off changes later runs, not this one's phase budgets."""
    good = demo_model()

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Planner"):
            return '{"goal": "%s", "approach": "Raise instead of skipping."}' % NEW_GOAL
        if req.system.startswith("You are the Builder") and "# Phase parse" in req.messages[0].content:
            return good.__globals__["PARSE_WRONG"]
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    live = services.config.strategy.model_copy(deep=True)
    live.run.max_replans, live.run.replan_similarity, live.run.doctor.model = 0, 1.0, None
    services.config = services.config.model_copy(update={"strategy": live})
    drive(services, ("start_run", run_id))
    ph = phase(view(services, run_id), "parse")
    assert ph["replans"] == 1 and ph["goal"] == NEW_GOAL


def test_should_replan() -> None:
    same = [Failure("test_failure", "Failed: DID NOT RAISE ValueError at /tmp/a/x.py:3"),
            Failure("test_failure", "Failed: DID NOT RAISE ValueError at /tmp/b/x.py:9")]
    assert should_replan(same, 0)[0]
    assert not should_replan(same, 1)[0]  # once per phase
    assert not should_replan(same[:1], 0)[0]
    assert not should_replan([same[0], Failure("regression", same[1].signature)], 0)[0]
    assert not should_replan([same[0], Failure("test_failure", "AssertionError: 3 != 4 in test_sum")], 0)[0]
    assert parse_replan('ok: {"goal": "g", "approach": "a"}').goal == "g"
    with pytest.raises(ReplanError):
        parse_replan('{"approach": "no goal"}')


@pytest.mark.parametrize(("text", "kind"), [
    ("E   ModuleNotFoundError: No module named 'flask'", "wrong stack"),
    ("ModuleNotFoundError: No module named 'calc.parse'", None),  # the project's own module: not the stack
    ("sqlite3.OperationalError: no such column: users.email", "schema mismatch"),
    ('psycopg.errors.UndefinedColumn: column "email" does not exist', "schema mismatch"),
    ("relation users does not exist", "schema mismatch"),
    ("ImportError: cannot import name 'parse' from 'calc'", "contract wrong"),
    ("TypeError: mean() got an unexpected keyword argument 'x'", "contract wrong"),
    ("TypeError: parse_numbers() missing 1 required positional argument: 'sep'", "contract wrong"),
    ("TypeError: f() takes 1 positional argument but 2 were given", "contract wrong"),
    ("AssertionError: 3 != 4", None),
    ("Failed: DID NOT RAISE <class 'ValueError'>", None),
])
def test_fatal_type(text: str, kind: str | None) -> None:
    assert fatal_type(text) == kind


def test_should_replan_now_on_a_fatal_type() -> None:
    fatal = [Failure("test_failure", "TypeError: parse_numbers() missing 1 required positional argument: 'sep'")]
    go, why = should_replan_now(fatal, 0)
    assert go and "contract wrong" in why
    assert not should_replan_now(fatal, 1)[0]  # already re-planned
    assert not should_replan_now([Failure("test_failure", "AssertionError: 3 != 4")], 0)[0]


PARSE_CONTRACT = '''=== FILE: calc/parse.py ===
```python
"""Parsing numbers from text."""


def parse_numbers(text: str, sep: str) -> list[float]:
    return [float(t) for t in text.split(sep) if t]
```
'''


def test_a_fatal_failure_type_is_replanned_at_once(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    planned: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        first = req.messages[0].content
        if req.system.startswith("You are the Planner"):
            planned.append(first)
            return '{"goal": "%s", "approach": "Keep the one-argument contract the tests use."}' % NEW_GOAL
        if req.system.startswith("You are the Builder") and "# Phase parse" in first:
            return good.__globals__["PARSE_FIXED"] if NEW_GOAL in first else PARSE_CONTRACT
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    ph = phase(v, "parse")
    assert ph["attempts"] == 2 and ph["replans"] == 1 and ph["goal"] == NEW_GOAL
    assert ph["plan_history"][0]["replaced_after_attempt"] == 1 and "contract wrong" in ph["plan_history"][0]["reason"]
    first = ph["attempt_details"][0]
    assert first["doctor"]["action"] == "replan" and first["doctor"]["source"] == "rules"
    assert len(planned) == 1 and "missing 1 required positional argument" in planned[0]


@pytest.mark.parametrize("text", ['{"goal": "   ", "approach": "x"}', '{"goal": "\\n\\t"}'])
def test_a_blank_goal_from_the_planner_is_refused(text: str) -> None:
    """The goal heads the phase's commit message (its first line): a blank one is no plan."""
    with pytest.raises(ReplanError):
        parse_replan(text)
    assert parse_replan('{"goal": "  Do it.  ", "approach": " step "}').goal == "Do it."


def test_failures_without_a_message_are_not_alike() -> None:
    assert not should_replan([Failure("auditor_rejection", ""), Failure("auditor_rejection", "")], 0)[0]
    assert not should_replan([Failure("auditor_rejection", " \n"), Failure("auditor_rejection", "")], 0)[0]


def test_two_different_auditor_rejections_are_not_the_same_failure(local_settings, demo_repo: Path) -> None:
    """Two unrelated objections of a required audit: the re-plan rule ("the last two attempts failed
    the same way") does not fire; each rejection's failure is the auditor's objection."""
    import json

    good = demo_model()
    audits = {"n": 0}
    objections = ["median() of an even-length list returns the upper middle value, not the average",
                  "the module has no docstring on mean()"]
    planner: list[str] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            return good.__globals__["STATS"]
        if req.system.startswith("You are the Auditor"):
            audits["n"] += 1
            if audits["n"] <= 2:
                text = objections[audits["n"] - 1]
                return json.dumps({"verdict": "reject", "summary": text, "issues": [{"severity": "major", "summary": text}]})
        if req.system.startswith("You are the Planner"):
            planner.append(req.messages[0].content)
            return '{"goal": "Something else entirely.", "approach": "x"}'
        if req.system.startswith("You are the Doctor"):
            return '{"action": "retry_with_fix", "hint": "address the review", "confidence": 0.9, "reason": "r"}'
        return good(req)

    services, run_id = required_audit_run(local_settings, respond, demo_repo)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first, second = phase(v, "stats")["attempt_details"][:2]
    assert objections[0] in first["failure"] and objections[1] in second["failure"]
    assert second["doctor"]["action"] != "replan", second["doctor"]
    assert planner == []


def test_a_truncated_planner_answer_is_no_plan(local_settings, demo_repo: Path) -> None:
    """The planner is cut off at its max_tokens: the phase keeps its plan (its goal is not the cut
    answer's first object) and retries."""
    good = demo_model()
    cut = '{"goal": "%s", "approach": "draft"} and, on second thought: ' % NEW_GOAL + "hmm. " * 1000

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Planner"):
            return cut
        if req.system.startswith("You are the Builder") and "# Phase parse" in req.messages[0].content:
            return good.__globals__["PARSE_WRONG"]
        return good(req)

    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run_id = submit(services, demo_plan())
    drive(services, ("start_run", run_id))
    ph = phase(view(services, run_id), "parse")
    assert ph["replans"] == 0 and ph["goal"] != NEW_GOAL
