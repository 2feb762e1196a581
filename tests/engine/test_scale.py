"""How cost grows with the size of a run and of a project's history: bounds that must hold,
checked by counting work (SQL statements, ORM rows loaded, columns selected), never wall-clock
time. Each was quadratic or unbounded before (a decide loaded every attempt of the run, a run's
view made a query per phase, reports read every prompt, learning scanned the project's history
once per rule and per phase at every run end, the runs list sorted every run)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from autopack.db.models import Attempt, ModelCall, Phase, Project, Rule, Run, utcnow
from autopack.db.session import get_engine, session_scope
from autopack.engine import runs
from autopack.plan import parse_plan
from autopack.sandbox.runner import UnsandboxedRunner
from autopack.settings import ROOT, Settings
from tests.engine.harness import make_services, register

sys.path.insert(0, str(ROOT / "bench"))
import _cluster  # noqa: E402
import _model  # noqa: E402


# -- helpers -------------------------------------------------------------------


@contextlib.contextmanager
def counting(url: str) -> Iterator[dict[str, Any]]:
    """Counts the SQL statements (and keeps their text) and the Attempt rows the ORM loads."""
    got: dict[str, Any] = {"sql": 0, "statements": [], "attempt_rows": 0}

    def on_sql(_conn, _cur, statement, *_a):  # type: ignore[no-untyped-def]
        got["sql"] += 1
        got["statements"].append(" ".join(statement.split()))

    def on_load(*_a):  # type: ignore[no-untyped-def]
        got["attempt_rows"] += 1

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", on_sql)
    event.listen(Attempt, "load", on_load)
    try:
        yield got
    finally:
        event.remove(engine, "before_cursor_execute", on_sql)
        event.remove(Attempt, "load", on_load)


def _services(settings: Settings, respond=_model.respond):  # type: ignore[no-untyped-def]
    services, _ = make_services(settings, respond)
    services.sandbox = UnsandboxedRunner()
    strategy = services.config.strategy.model_copy(deep=True)
    strategy.run.max_phases = 1000  # users run plans of 100+ phases
    services.config = services.config.model_copy(update={"strategy": strategy})
    return services


def _finished_run(services, phases: int, *, calls_per_phase: int = 1, prompt_chars: int = 100,
                  project: str = "bench", rule_ids: list[int] | None = None) -> str:  # type: ignore[no-untyped-def]
    """A run of ``phases`` phases inserted in bulk as if it had ended: every phase COMPLETE with one
    accepted attempt and ``calls_per_phase`` Builder calls (``rule_ids`` carried)."""
    plan = parse_plan(_cluster.make_plan(phases, project=project, tiers=max(1, phases // 20)))
    with session_scope(services.db_url) as s:
        run = runs.create_run(s, plan, services.config)
        run.state, run.finished_at = "DONE_SUCCESS", utcnow()
        s.flush()
        for ph in s.query(Phase).filter(Phase.run_id == run.id).all():
            ph.state, ph.attempts_used = "COMPLETE", 1
            a = Attempt(phase_id=ph.id, run_id=run.id, number=1, state="DONE", model="m", decision="complete",
                        candidate_commit="0" * 40, gate={"passed": True, "regressions": [], "flaky": []},
                        test_result={"summary": "1 passed", "outcomes": {"t": "passed"}}, audit={"approved": True},
                        finished_at=utcnow())
            s.add(a)
            s.flush()
            for _ in range(calls_per_phase):
                s.add(ModelCall(run_id=run.id, phase_id=ph.id, attempt_id=a.id, role="builder", provider="p", model="m",
                                request_key="k", prompt={"user": "x" * prompt_chars}, response_text="y" * prompt_chars,
                                input_tokens=10, output_tokens=10, cost_usd=0.001, rules=list(rule_ids or [])))
        return run.id


def _target(tmp_path: Path, settings: Settings, files: int = 0) -> Path:
    repo = _cluster.make_target(tmp_path / "target", files)
    register(settings, repo, "bench")
    return repo


# -- decide: every attempt of the run, at every decide ------------------------


def test_decide_does_not_load_every_attempt_of_the_run(local_settings, tmp_path: Path) -> None:
    """decide_attempt computed the health counts from ``select(Attempt).where(run_id)``: whole ORM rows
    (gate, test_result, audit, edit_rounds JSON) of every attempt of the run, at every decide. The
    run as a whole loaded O(phases^2) attempt rows."""
    from autopack.engine.runner import create_step, execute

    services = _services(local_settings)
    _target(tmp_path, local_settings)
    run_id = runs_submit(services, 25)
    loaded: list[int] = []
    queue = [create_step(services.db_url, run_id, "start_run", run_id)]
    while queue:
        step_id, name = queue.pop(0)
        with counting(services.db_url) as got:
            queue += execute(services, step_id, owner="review")
        if name == "decide":
            loaded.append(got["attempt_rows"])
    assert len(loaded) == 25
    # The phase's own attempts (and the one decided) are all a decide needs: the health budget is a
    # count over the run, one aggregate query.
    assert loaded[-1] <= 5, f"attempt rows loaded per decide, phase 1 → 25: {loaded}"


def runs_submit(services, phases: int) -> str:  # type: ignore[no-untyped-def]
    with session_scope(services.db_url) as s:
        return runs.create_run(s, parse_plan(_cluster.make_plan(phases)), services.config).id


# -- GET /runs/<id>, the dashboard's run page and the postmortem: one query per phase ---------


def _postmortem_facts(s, run):  # type: ignore[no-untyped-def]
    from autopack import postmortem

    return postmortem.collect_facts(s, run)


@pytest.mark.parametrize("view", [runs.run_view, _postmortem_facts], ids=["run_view", "postmortem_facts"])
def test_a_runs_views_statements_do_not_grow_with_phases(local_settings, tmp_path: Path, view) -> None:  # type: ignore[no-untyped-def]
    """run_view (every GET /runs/<id>, cancel answer and dashboard refresh) and the postmortem's
    facts walked run.tiers → tier.phases → phase.attempts through lazy loads: one SELECT per tier
    and one per phase."""
    services = _services(local_settings)
    _target(tmp_path, local_settings)
    small, large = _finished_run(services, 10), _finished_run(services, 200)
    counts = {}
    for rid in (small, large):
        with session_scope(services.db_url) as s, counting(services.db_url) as got:
            view(s, runs.get_run(s, rid))
        counts[rid] = got["sql"]
    assert counts[large] <= counts[small] + 2, f"statements: 10 phases {counts[small]}, 200 phases {counts[large]}"


def test_cost_reports_do_not_load_prompts_and_answers(local_settings, tmp_path: Path) -> None:
    """GET /runs/<id>/costs (run_costs) and the postmortem (collect_facts, twice) selected whole
    model_calls rows: every prompt (up to 160 kB of context each) and answer of the run, to sum
    four numbers per call."""
    from autopack import postmortem
    from autopack.engine.costs import run_costs

    services = _services(local_settings)
    _target(tmp_path, local_settings)
    rid = _finished_run(services, 40, calls_per_phase=3, prompt_chars=50_000)
    heavy = []
    for what in (run_costs, postmortem.collect_facts):
        with session_scope(services.db_url) as s, counting(services.db_url) as got:
            what(s, runs.get_run(s, rid))
        heavy += [f"{what.__name__}: {q[:120]}" for q in got["statements"]
                  if q.startswith("SELECT") and ("model_calls.prompt" in q or "model_calls.response_text" in q)]
    with session_scope(services.db_url) as s:
        size = s.execute(text("SELECT sum(length(prompt) + length(response_text)) FROM model_calls WHERE run_id = :r"),
                         {"r": rid}).scalar()
    assert not heavy, f"{len(heavy)} statements read the run's {size / 1e6:.1f} MB of prompts and answers: {heavy}"


# -- learning at every run end: every phase of the project, for every rule ----


def test_rule_refresh_at_run_end_does_not_scan_project_history_per_rule(local_settings, tmp_path: Path) -> None:
    """retire_rules (the run.finished handler) called rule_effect for each active rule, which loaded
    every phase of every run of the project and then, per phase, its attempts and its Builder
    calls: 1 + 2 x phases statements per rule, at every run end, growing with the project's age."""
    from autopack.engine.learning import retire_rules

    services = _services(local_settings)
    _target(tmp_path, local_settings)
    with session_scope(services.db_url) as s:
        pid = s.query(Project).filter_by(name="bench").one().id
        ids = []
        for k in range(3):
            r = Rule(project_id=pid, key=f"test_failure:{k}", text="do x", scope_pattern="out/**", category=None,
                     provenance={"hints": [], "learned_from": []}, last_matched_at=utcnow())
            s.add(r)
            s.flush()
            ids.append(r.id)
    _finished_run(services, 10, rule_ids=ids)
    counts = []
    for extra in (0, 4):  # 10 phases of history, then 10 + 4 x 50 = 210
        for _ in range(extra):
            _finished_run(services, 50, rule_ids=ids)
        with session_scope(services.db_url) as s, counting(services.db_url) as got:
            retire_rules(s, services.config.strategy.learning, project_id=pid)
        counts.append(got["sql"])
    assert counts[1] <= counts[0] + 3, f"retire_rules statements (3 rules): 10 phases {counts[0]}, 210 phases {counts[1]}"


# -- the runs list (API and dashboard) sorts the whole runs table -------------


def test_runs_list_is_served_by_an_index(local_settings) -> None:
    """list_runs orders by runs.created_at, which had no index: every GET /runs and every /ui load
    read and sorted all the runs ever made to return the newest 50 (or 100)."""
    from sqlalchemy import select

    with session_scope(local_settings.db_url) as s:
        for q in (select(Run.id).order_by(Run.created_at.desc()).limit(50),
                  select(Run.id).where(Run.project_id == 1).order_by(Run.created_at.desc()).limit(50)):
            sql = str(q.compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
            plan = [row[-1] for row in s.execute(text("EXPLAIN QUERY PLAN " + sql))]
            assert not any("TEMP B-TREE" in p for p in plan), f"newest runs: {plan}"
