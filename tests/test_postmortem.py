"""The postmortem: facts that match the database, Markdown that model text cannot forge."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from autopack.db.models import Attempt, Issue, IssueOccurrence, Postmortem, Project, Run
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.events.dispatch import CallsInFlight, dispatch_pending
from autopack.postmortem import md_inline, render
from autopack.settings import Settings
from tests.engine.harness import demo_plan, make_services
from web import create_app


def _ended_run_with(local_settings: Settings, tmp_path: Path, *, doctor_reason: str, issue_summary: str) -> str:
    from autopack.config import load_config

    config = load_config(local_settings.config_dir)
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    with session_scope(local_settings.db_url) as s:
        run = runsvc.create_run(s, demo_plan(), config)
        run_id = run.id
        ph = run.phases[0]
        a = Attempt(phase_id=ph.id, run_id=run_id, number=1, model="claude-haiku-4-5", state="FAILED",
                    failure_class="test_failure", failure="1 failed", decision="fail", classification="test_failure",
                    doctor={"action": "mark_fatal", "source": "model", "reason": doctor_reason})
        s.add(a)
        s.flush()
        issue = Issue(project_id=run.project_id, key="auditor:x", source="auditor", severity="major", summary=issue_summary,
                      path="calc/stats.py", count=1)
        s.add(issue)
        s.flush()
        s.add(IssueOccurrence(issue_id=issue.id, run_id=run_id, phase_key=ph.key, tier_key=ph.tier.key, attempt_id=a.id, open=True))
    with session_scope(local_settings.db_url) as s:
        runsvc.cancel_run(s, run_id)
    dispatch_pending(SimpleNamespace(db_url=local_settings.db_url))
    return run_id


def test_model_text_cannot_forge_sections_of_the_postmortem(local_settings: Settings, tmp_path: Path) -> None:
    """The Doctor's reason and an auditor's issue summary are model output; in the postmortem they
    stay inside their bullet (line breaks become spaces, HTML is escaped), not start headings or
    outcome lines of their own. The JSON facts keep the text as it was."""
    forged = "\n\n**Outcome:** DONE_SUCCESS\n\n## Open issues\n\n- none\n\n## Failures and what fixed them\n\n- none"
    run_id = _ended_run_with(local_settings, tmp_path, doctor_reason="looks fatal" + forged,
                             issue_summary="null deref" + forged)
    client = create_app(local_settings, enqueue=lambda steps: None, broker_check=lambda: None).test_client()
    md = client.get(f"/runs/{run_id}/postmortem").get_data(as_text=True)
    lines = md.splitlines()
    assert sum(1 for line in lines if line.startswith("**Outcome:**")) == 1, md
    assert sum(1 for line in lines if line == "## Open issues") == 1, md
    assert sum(1 for line in lines if line == "## Failures and what fixed them") == 1, md
    facts = client.get(f"/runs/{run_id}/postmortem?format=json").get_json()["facts"]
    assert facts["phases"][0]["attempts"][0]["action_reason"].startswith("looks fatal\n\n**Outcome:**")
    # Calls the reconciler charged at their worst case (no usage, no ModelCall row) have their row.
    assert facts["charged_at_worst_case"] == {"calls": 0, "tokens": 0, "cost_usd": 0.0}
    facts["charged_at_worst_case"] = {"calls": 1, "tokens": 500, "cost_usd": 0.01}
    assert "| charged at worst case (usage never reported) | 1 | 500 | $0.0100 |" in render(facts)


def test_md_inline_keeps_text_on_its_line_and_escapes_html_and_links() -> None:
    assert md_inline("a\n\n## b\r\n- c") == "a ## b - c"
    assert md_inline("<img src=x onerror=alert(1)> & [x](javascript:alert(1))") == \
        "&lt;img src=x onerror=alert(1)&gt; &amp; [x]\\(javascript:alert(1))"
    assert md_inline("[major] auditor: fine") == "[major] auditor: fine"


def test_the_postmortem_of_a_run_cancelled_mid_call_waits_for_the_call_and_counts_it(local_settings: Settings, tmp_path: Path) -> None:
    """A run cancelled while a model call is in flight: the events queue's first try at the
    postmortem finds the call unsettled and is tried again later (the task retries RetryableError);
    once the call settled, the postmortem (written once, never again) is written with its spend.
    Before, it was written at once and reported less than the run row."""
    from autopack.engine.steps import CallScope, make_call
    from autopack.llm.base import Message

    dispatcher = SimpleNamespace(db_url=local_settings.db_url)
    state: dict[str, str] = {}

    def respond(req):  # type: ignore[no-untyped-def]
        # The operator cancels while this call is with the provider; the events queue writes the postmortem.
        with session_scope(local_settings.db_url) as s:
            runsvc.cancel_run(s, state["run"])
        with pytest.raises(CallsInFlight):
            dispatch_pending(dispatcher)
        return "some answer " * 200

    services, _ = make_services(local_settings, respond)
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    with session_scope(local_settings.db_url) as s:
        run = runsvc.create_run(s, demo_plan(), services.config)
        state["run"] = run.id
        phase_id = run.phases[0].id
    call = make_call(services, CallScope(state["run"], phase_id, None, "builder", "claude-haiku-4-5", None))
    call("system", [Message(role="user", content="build it")], 4000)
    with session_scope(local_settings.db_url) as s:
        assert s.get(Postmortem, state["run"]) is None
    dispatch_pending(dispatcher)  # the events task's retry

    with session_scope(local_settings.db_url) as s:
        run = s.get(Run, state["run"])
        assert run is not None and run.state == "CANCELLED" and run.cost_usd > 0
        pm = s.get(Postmortem, run.id)
        assert pm is not None and len(s.scalars(select(Postmortem)).all()) == 1
        db_cost, db_tokens, pm_facts = round(run.cost_usd, 6), run.tokens_used, pm.facts
    assert (pm_facts["cost_usd"], pm_facts["tokens"]) == (db_cost, db_tokens), (
        f"postmortem says {pm_facts['tokens']} tokens ${pm_facts['cost_usd']}, the run row {db_tokens} tokens ${db_cost}")
    assert sum(v["cost_usd"] for v in pm_facts["cost_by_role_model"].values()) == pytest.approx(db_cost)
