"""What a run learns: hints from fixed failures, a rule when the failure recurs, carried by later
prompts of the same project and scope only, with measured effect."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from autopack.db.models import Hint, ModelCall, Project, Rule
from autopack.db.session import session_scope
from autopack.demo import create_target_repo
from autopack.engine.learning import rule_effect
from autopack.events.dispatch import dispatch_pending
from tests.engine.harness import demo_model, demo_plan, drive, make_services, register, submit, view


def _failed(v: dict) -> int:  # type: ignore[type-arg]
    return sum(1 for t in v["tiers"] for p in t["phases"] for a in p["attempt_details"] if a["failure_class"])


def _rules_carried(url: str, run_id: str) -> list[list[int]]:
    with session_scope(url) as s:
        return [c.rules or [] for c in s.scalars(select(ModelCall).where(ModelCall.run_id == run_id, ModelCall.role == "builder").order_by(ModelCall.id))]


def test_learning_across_runs_is_per_project_and_per_scope(local_settings, tmp_path: Path) -> None:
    services, client = make_services(local_settings, demo_model())
    register(local_settings, create_target_repo(tmp_path / "a"), "alpha")
    register(local_settings, create_target_repo(tmp_path / "b"), "beta")
    url = local_settings.db_url

    def run(project: str) -> tuple[str, dict]:  # type: ignore[type-arg]
        run_id = submit(services, demo_plan().model_copy(update={"project": project}))
        drive(services, ("start_run", run_id))
        dispatch_pending(services)
        return run_id, view(services, run_id)

    first_id, first = run("alpha")
    assert first["state"] == "DONE_SUCCESS" and _failed(first) == 2
    with session_scope(url) as s:
        hints = s.scalars(select(Hint).order_by(Hint.id)).all()
        assert [(h.phase_key, h.failure_class) for h in hints] == [("stats", "test_failure"), ("parse", "test_failure")]
        assert hints[0].key == hints[1].key and "DID NOT RAISE" in hints[0].signature
        rule = s.scalar(select(Rule))
        assert rule is not None and rule.scope_pattern == "calc/**" and rule.category is None
        assert rule.provenance["runs"] == [first_id] and rule.provenance["hints"] == [h.id for h in hints]
        alpha_rule = rule.id
    # The rule was promoted when parse completed: the cli phase of the same run already carried it.
    assert _rules_carried(url, first_id) == [[], [], [], [], [alpha_rule]]

    second_id, second = run("alpha")
    assert second["state"] == "DONE_SUCCESS" and _failed(second) == 0
    assert _rules_carried(url, second_id) == [[alpha_rule]] * 3
    prompts = [c for c in client.calls if c.system.startswith("You are the Builder")][-3:]
    assert all("(learned rule, scope calc/**)" in c.messages[0].content for c in prompts)
    # The Auditor is given the same rules, and its calls record them too.
    audits = [c for c in client.calls if c.system.startswith("You are the Auditor")][-3:]
    assert all("## Project rules the change should respect" in c.messages[0].content for c in audits)
    with session_scope(url) as s:
        audit_rules = [c.rules for c in s.scalars(select(ModelCall).where(ModelCall.run_id == second_id, ModelCall.role == "auditor"))]
    assert audit_rules == [[alpha_rule]] * 3

    # Another project never sees alpha's rule.
    beta_id, beta = run("beta")
    assert _failed(beta) == 2
    assert alpha_rule not in {r for rules in _rules_carried(url, beta_id) for r in rules}

    with session_scope(url) as s:
        effect = rule_effect(s, s.get(Rule, alpha_rule))
        assert effect["carried_phases"] == 4 and effect["carried_failures"] == 0
        assert effect["other_phases"] == 2 and effect["other_failures"] == 2
        # A rule scoped to src/api/** is never carried by a phase scoped elsewhere.
        alpha = s.scalar(select(Project).where(Project.name == "alpha"))
        s.add(Rule(project_id=alpha.id, key="x:1", text="API rule.", scope_pattern="src/api/**", category=None, provenance={"hints": [1, 2, 3]}))
    third_id, _ = run("alpha")
    with session_scope(url) as s:
        api_rule = s.scalar(select(Rule.id).where(Rule.key == "x:1"))
    assert api_rule not in {r for rules in _rules_carried(url, third_id) for r in rules}
    assert _rules_carried(url, third_id) == [[alpha_rule]] * 3


def test_configured_models_write_the_lesson_and_the_narrative(local_settings, tmp_path: Path) -> None:
    good = demo_model()

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You write the lessons"):
            assert "DID NOT RAISE" in req.messages[0].content and "```diff" in req.messages[0].content
            return "Raise ValueError on empty or invalid input; the tests use pytest.raises."
        if req.system.startswith("You write the summary"):
            assert '"state": "DONE_SUCCESS"' in req.messages[0].content
            return "The run added statistics, parsing and a CLI; two phases needed a retry."
        return good(req)

    services, _ = make_services(local_settings, respond)
    learning = services.config.strategy.learning.model_copy(update={"lesson_model": "claude-haiku-4-5", "narrative_model": "claude-haiku-4-5"})
    services.config = services.config.model_copy(update={"strategy": services.config.strategy.model_copy(update={"learning": learning})})
    register(local_settings, create_target_repo(tmp_path / "a"), "demo")
    run_id = submit(services, demo_plan())
    done = drive(services, ("start_run", run_id))
    # The two fixes' lessons are written on the agents queue (a diagnose step each), not inside decide.
    assert [name for name, _ in done].count("diagnose") == 2
    dispatch_pending(services)
    with session_scope(local_settings.db_url) as s:
        lessons = [h.lesson for h in s.scalars(select(Hint))]
        assert lessons == ["Raise ValueError on empty or invalid input; the tests use pytest.raises."] * 2
        assert s.scalar(select(Rule)).text == lessons[0]
        roles = sorted({c.role for c in s.scalars(select(ModelCall).where(ModelCall.run_id == run_id))})
        assert roles == ["auditor", "builder", "lesson", "postmortem"]
        from autopack.db.models import Postmortem

        pm = s.get(Postmortem, run_id)
        assert "## Summary\n\nThe run added statistics, parsing and a CLI; two phases needed a retry." in pm.markdown
        assert "## Timeline" in pm.markdown
