"""Budget calibration from the database (autopack/engine/calibration.py), through the API and the CLI:
finished phases become samples; a phase the ledger stopped at its own cap counts as stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from autopack.cli import main
from autopack.db.models import Attempt, Phase, Project
from autopack.db.session import session_scope
from autopack.engine.calibration import phase_samples
from autopack.engine.ledger import reserve
from autopack.errors import BudgetExceeded
from autopack.settings import Settings
from tests.engine.harness import make_services, register, stats_model, stats_plan, submit
from web import create_app


def _finish(db_url: str, run_id: str, state: str, tokens: int, *, over_cap: bool = False) -> None:
    """Give the run's one phase an end: its spend, and for a phase stopped at its cap the attempt the
    engine records from the ledger's own refusal."""
    with session_scope(db_url) as s:
        ph = s.scalars(select(Phase).where(Phase.run_id == run_id)).one()
        ph.state, ph.tokens_used, ph.cost_usd, ph.attempts_used = state, tokens, tokens / 1e6, 1
        failure = None
        if over_cap:
            try:
                reserve(s, run_id, ph.id, int(ph.budget["token_cap"]) + 1, 0.0, None)
            except BudgetExceeded as exc:
                failure = str(exc)
            assert failure is not None
        s.add(Attempt(phase_id=ph.id, run_id=run_id, number=1, state="FAILED" if over_cap else "DONE",
                      failure_class="budget" if over_cap else None, failure=failure))


@pytest.fixture()
def history(local_settings: Settings, demo_repo: Path) -> Settings:
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    for tokens in (3000, 4000, 5000, 6000, 7000):
        _finish(local_settings.db_url, submit(services, stats_plan("feature")), "COMPLETE", tokens)
    _finish(local_settings.db_url, submit(services, stats_plan("feature")), "FAILED", 60000, over_cap=True)
    _finish(local_settings.db_url, submit(services, stats_plan("docs")), "COMPLETE", 1000)
    submit(services, stats_plan("feature"))  # still queued: not a sample
    return local_settings


def test_finished_phases_are_the_samples(history: Settings) -> None:
    with session_scope(history.db_url) as s:
        samples = phase_samples(s, s.scalar(select(Project)), None)
    assert [(x.category, x.completed, x.tokens, x.stopped_at_token_cap or x.stopped_at_cost_cap) for x in samples] == [
        ("feature", True, 3000, False), ("feature", True, 4000, False), ("feature", True, 5000, False),
        ("feature", True, 6000, False), ("feature", True, 7000, False), ("feature", False, 60000, True), ("docs", True, 1000, False)]
    assert {x.token_cap for x in samples if x.category == "feature"} == {60000}
    assert [x.token_cap for x in samples if x.category == "docs"] == [20000]


def test_the_report_through_the_api_and_the_cli(history: Settings, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    client = create_app(history, enqueue=lambda steps: None, broker_check=lambda: None).test_client()
    body = client.get("/reports/budgets?project=demo").get_json()
    feature = next(c for c in body["categories"] if c["category"] == "feature")
    assert (feature["advice"], feature["stopped_at_cap"], feature["suggested_token_cap"]) == ("raise", 1, 90000)
    docs = next(c for c in body["categories"] if c["category"] == "docs")
    assert docs["advice"] == "too few phases" and docs["suggested_token_cap"] == 20000
    assert client.get("/reports/budgets?project=ghost").status_code == 404
    assert client.get("/reports/budgets?days=0").get_json()["field"] == "days"
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(history.state_path))
    assert main(["budgets", "--project", "demo"]) == 0
    out = capsys.readouterr().out
    assert "feature" in out and "90,000  raise: 1 of 6 phases stopped at the cap" in out
    assert main(["budgets", "--json", "--min-completed", "1"]) == 0
    assert next(c for c in json.loads(capsys.readouterr().out)["categories"] if c["category"] == "docs")["advice"] == "lower"
    assert main(["budgets", "--project", "ghost"]) == 2
