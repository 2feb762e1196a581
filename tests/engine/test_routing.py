"""Model routing on real runs: a provider near one of its quota windows (counted from the calls in
the database) or recently out is skipped for the next model of the chain; a provider that answers
529 for the primary model falls back along the chain (recorded, after a backoff); a high-risk phase
stops with the reason instead of taking a weaker model."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session

from autopack.config import QuotaConfig, load_config
from autopack.db.models import Attempt, Base, ModelCall, Phase
from autopack.db.session import session_scope
from autopack.engine.routing import choose_model, provider_state
from autopack.engine.runs import list_events
from autopack.errors import ProviderUnavailable
from autopack.settings import ROOT
from tests.engine.harness import drive, make_services, phase, register, stats_model, stats_plan, submit, view

pytestmark = pytest.mark.sandbox


def _overloaded(req):  # type: ignore[no-untyped-def]
    """The primary model's provider answers 529 to the Builder."""
    if req.system.startswith("You are the Builder") and req.model == "claude-haiku-4-5":
        raise ProviderUnavailable("anthropic", "overloaded_error: Overloaded", 529)
    return stats_model(req)


def _usage(db_url: str, run_id: str, provider: str, tokens: int, at: datetime | None = None, error: str | None = None) -> None:
    with session_scope(db_url) as s:
        call = ModelCall(run_id=run_id, role="builder", provider=provider, model="x", request_key="k", prompt={},
                         input_tokens=tokens, output_tokens=0, error=error)
        if at is not None:
            call.created_at = at
        s.add(call)


def test_a_provider_near_its_hourly_token_quota_is_skipped(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    _usage(local_settings.db_url, run_id, "anthropic", 3_700_000)  # limit 4,000,000 per hour, margin 0.9
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    attempt = phase(v, "stats")["attempt_details"][0]
    assert attempt["model"] == "gpt-5.4-mini"
    routing = attempt["routing"]
    assert routing["wanted"] == "claude-haiku-4-5" and routing["model"] == "gpt-5.4-mini" and routing["level"] == "low"
    assert routing["skipped"] == [{"model": "claude-haiku-4-5",
                                   "reason": "provider anthropic is near its quota (tokens per hour: 3700000 of 4000000)"}]
    assert [c.model for c in client.calls if c.system.startswith("You are the Builder")] == ["gpt-5.4-mini"]


def test_usage_outside_the_window_does_not_count(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    _usage(local_settings.db_url, run_id, "anthropic", 3_700_000, at=datetime.now(timezone.utc) - timedelta(hours=2))
    drive(services, ("start_run", run_id))
    attempt = phase(view(services, run_id), "stats")["attempt_details"][0]
    assert attempt["model"] == "claude-haiku-4-5" and attempt["routing"]["skipped"] == []


def test_high_risk_phase_near_quota_stops_without_calling_a_weaker_model(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("security_auth_change"))
    _usage(local_settings.db_url, run_id, "anthropic", 3_900_000)
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_INFRASTRUCTURE"
    assert "high-risk category security_auth_change" in v["failure_reason"]
    assert "refusing to fall back to a weaker model" in v["failure_reason"] and "near its quota" in v["failure_reason"]
    assert [c for c in client.calls if c.system.startswith("You are the Builder")] == []
    attempt = phase(v, "stats")["attempt_details"][0]
    assert attempt["routing"]["model"] is None and attempt["routing"]["stop_reason"].startswith("high-risk category")


def test_requests_per_day_and_recent_outages(local_settings, demo_repo: Path) -> None:
    cfg = load_config(local_settings.config_dir)
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    now = datetime.now(timezone.utc)
    with session_scope(local_settings.db_url) as s:
        fresh = provider_state(s, cfg.models, "anthropic", now, 60)
        assert fresh.usage["day"].requests == 0 and fresh.down_until is None
    _usage(local_settings.db_url, run_id, "anthropic", 10, error="ProviderUnavailable: anthropic: overloaded (HTTP 529)")
    with session_scope(local_settings.db_url) as s:
        st = provider_state(s, cfg.models, "anthropic", now, 60)
        assert st.usage["day"].requests == 1 and st.usage["hour"].tokens == 10
        assert st.down_until is not None and st.down_until > now and "529" in st.down_reason
        routed = choose_model(s, cfg.models, cfg.strategy.run.routing, role="builder", complexity="low", category="feature",
                              high_risk=False, chain=["claude-haiku-4-5", "gpt-5.4-mini"])
        assert routed.model == "gpt-5.4-mini" and "is down until" in routed.skipped[0][1]
        # A cooldown of 0 ignores outages.
        assert provider_state(s, cfg.models, "anthropic", now, 0).down_until is None
        # When every provider of a normal chain is only recently out, the chain is tried again.
        again = choose_model(s, cfg.models, cfg.strategy.run.routing, role="builder", complexity="low", category="feature",
                             high_risk=False, chain=["claude-haiku-4-5", "claude-sonnet-4-6"])
        assert again.model == "claude-haiku-4-5"
        # A high-risk category does not move to another model, but it may try its own again.
        high = choose_model(s, cfg.models, cfg.strategy.run.routing, role="builder", complexity="low", category="x",
                            high_risk=True, chain=["claude-haiku-4-5", "gpt-5.4-mini"])
        assert high.model == "claude-haiku-4-5" and "is down until" in high.skipped[0][1]
        assert high.skipped[-1] == ("claude-haiku-4-5", "every provider was recently out: trying again")


def test_normal_category_falls_back_along_the_chain_after_a_backoff(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _overloaded)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS"
    attempt = phase(v, "stats")["attempt_details"][0]
    assert attempt["model"] == "gpt-5.4-mini" and phase(v, "stats")["attempts"] == 1
    with session_scope(local_settings.db_url) as s:
        calls = [(c.model, c.error is None) for c in s.scalars(select(ModelCall).where(ModelCall.role == "builder").order_by(ModelCall.id))]
        events = [e for e in list_events(s, run_id) if e["type"] == "model.fallback"]
    assert calls == [("claude-haiku-4-5", False), ("gpt-5.4-mini", True)]
    assert [(e["payload"]["from_model"], e["payload"]["to_model"]) for e in events] == [("claude-haiku-4-5", "gpt-5.4-mini")]
    assert "529" in events[0]["payload"]["reason"]
    base = services.config.strategy.run.routing.backoff_base_s
    assert base / 2 <= events[0]["payload"]["backoff_s"] <= base  # the first backoff: within [base/2, base]
    assert attempt["routing"]["fallbacks"] == ["gpt-5.4-mini"] and attempt["routing"]["model"] == "gpt-5.4-mini"


def test_high_risk_phase_stops_instead_of_downgrading(local_settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, _overloaded)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("security_auth_change"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_FAILED_INFRASTRUCTURE"
    assert "never falls back to a weaker model" in v["failure_reason"] and "claude-haiku-4-5" in v["failure_reason"]
    with session_scope(local_settings.db_url) as s:
        models = {c.model for c in s.scalars(select(ModelCall).where(ModelCall.role == "builder"))}
    assert models == {"claude-haiku-4-5"}


def test_a_single_audit_moves_past_a_provider_near_its_quota(local_settings, demo_repo: Path) -> None:
    services, client = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    _usage(local_settings.db_url, run_id, "openai", 3_800_000)  # the auditor's provider (gpt-5.4-mini)
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    audit = phase(v, "stats")["attempt_details"][0]["audit"]
    assert audit["model"] == "claude-haiku-4-5" and audit["skipped"][0]["model"] == "gpt-5.4-mini"
    assert "near its quota" in audit["skipped"][0]["reason"]
    assert [c.model for c in client.calls if c.system.startswith("You are the Auditor")] == ["claude-haiku-4-5"]


def test_an_auditor_outage_falls_back_and_a_total_one_uses_no_attempt(local_settings, demo_repo: Path) -> None:
    down = {"gpt-5.4-mini", "claude-haiku-4-5", "claude-sonnet-4-6"}  # every auditor model, for the first review

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Auditor") and req.model in down:
            down.discard(req.model)
            raise ProviderUnavailable("p", "overloaded_error: Overloaded", 529)
        return stats_model(req)

    services, client = make_services(local_settings, respond)
    strategy = services.config.strategy.model_copy(deep=True)
    strategy.categories["feature"] = {"audit": "required"}
    strategy.run.routing.backoff_base_s = 0.05
    services.config = services.config.model_copy(update={"strategy": strategy})
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first, second = phase(v, "stats")["attempt_details"]
    # The whole chain was out: the attempt failed as a provider error and used up no attempt.
    assert first["audit"]["verdict"] == "error" and first["audit"]["fallbacks"] == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    assert first["failure_class"] == "provider_error" and first["classification"] == "provider_error"
    assert first["doctor"]["burns_attempt"] is False and first["decision"] == "retry"
    # The candidate was built and passed the gate: the next attempt reviews that same candidate again
    # instead of paying for a second build. Every provider's last call was the outage, so routing takes
    # the wanted model again.
    assert second["commit"] == first["commit"] and second["test_summary"] == first["test_summary"]
    assert second["gate"] == first["gate"] and second["gate"]["passed"] is True
    assert second["tokens"] < first["tokens"]  # the second review only: no Builder tokens
    assert second["audit"]["verdict"] == "approve" and second["audit"]["model"] == "gpt-5.4-mini"
    assert second["decision"] == "complete"
    builder_calls = [c for c in client.calls if c.system.startswith("You are the Builder")]
    assert len(builder_calls) == 1
    with session_scope(local_settings.db_url) as s:
        started = [e for e in list_events(s, run_id) if e["type"] == "attempt.started"]
        audited = [e for e in list_events(s, run_id) if e["type"] == "attempt.audited"]
    assert len(started) == 2 and started[1]["payload"]["reaudit_of"] == started[0]["attempt_id"]
    assert [e["attempt_id"] for e in audited] == [started[0]["attempt_id"], started[1]["attempt_id"]]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_quota_windows_sum_the_recorded_calls(backend: str, local_settings, demo_repo: Path, request: pytest.FixtureRequest) -> None:
    """Each window holds the calls recorded after now - period, of that provider only."""
    from autopack.db.migrate import upgrade

    url = local_settings.db_url if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    settings = local_settings.model_copy(update={"database_url": url}) if backend == "postgresql" else local_settings
    services, _ = make_services(settings, stats_model)
    register(settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    now = datetime.now(timezone.utc)
    for ago, tokens, provider in [(timedelta(minutes=5), 100, "anthropic"), (timedelta(minutes=59), 200, "anthropic"),
                                  (timedelta(hours=1, seconds=1), 400, "anthropic"), (timedelta(hours=5), 1000, "anthropic"),
                                  (timedelta(days=1, seconds=1), 2000, "anthropic"), (timedelta(days=3), 4000, "anthropic"),
                                  (timedelta(days=8), 8000, "anthropic"), (timedelta(minutes=1), 50_000, "openai")]:
        _usage(url, run_id, provider, tokens, at=now - ago)
    cfg = services.config.models.model_copy(deep=True)
    cfg.providers["anthropic"].quotas = [QuotaConfig(kind="tokens", period=p, limit=10**9) for p in ("hour", "day", "week")]
    with session_scope(url) as s:
        usage = provider_state(s, cfg, "anthropic", now, 0).usage
    assert (usage["hour"].tokens, usage["hour"].requests) == (300, 2)
    assert (usage["day"].tokens, usage["day"].requests) == (1700, 4)
    assert (usage["week"].tokens, usage["week"].requests) == (7700, 6)
    # The same statement tells whether the provider's last call (inside the windows or not) was an outage.
    with session_scope(url) as s:
        assert provider_state(s, cfg, "anthropic", now, 60).down_until is None  # its last call succeeded
    outage_at = now - timedelta(seconds=10)
    _usage(url, run_id, "anthropic", 0, at=outage_at, error="ProviderUnavailable: overloaded (529)")
    _usage(url, run_id, "openai", 0, at=now - timedelta(days=30), error="ProviderUnavailable: down")  # a newer id, an older time
    bare = services.config.models.model_copy(deep=True)
    bare.providers["anthropic"].quotas = []
    for models in (cfg, bare):  # with quota windows, and with none (the outage alone)
        with session_scope(url) as s:
            state = provider_state(s, models, "anthropic", now, 60)
            assert state.down_until == outage_at + timedelta(seconds=60) and state.down_reason == "overloaded (529)"
            assert provider_state(s, models, "anthropic", now, 0).down_until is None  # no cooldown: outages do not count
            # openai's last call is the latest by time (the index's order: by id the provider's whole
            # history was sorted), the success a minute ago, not the month-old outage written after it.
            assert provider_state(s, models, "openai", now, 60).down_until is None
    with session_scope(url) as s:
        assert provider_state(s, cfg, "anthropic", now, 60).usage["hour"].requests == 3  # the outage is a request too


@pytest.mark.postgres
def test_outages_are_timed_by_the_database_clock_whatever_the_workers_clocks(local_settings, demo_repo: Path, pg_url: str) -> None:
    """A worker 10 minutes ahead records an outage, one 10 minutes behind routes the next call. Each
    by its own clock, the outage was 10 minutes in the future of the router, which skipped the
    provider for 10 minutes beyond its cooldown; both on the database's clock, the cooldown is what it says."""
    import time

    from autopack.db.migrate import upgrade
    from autopack.engine.leases import db_now
    from tests.engine.harness import as_worker_with_clock

    upgrade(pg_url)
    settings = local_settings.model_copy(update={"database_url": pg_url})
    services, _ = make_services(settings, stats_model)
    register(settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    record = ("import tempfile\nfrom autopack.settings import Settings\nfrom autopack.engine.steps import CallScope, make_call\n"
              "from autopack.errors import ProviderUnavailable\nfrom autopack.llm.base import Message\n"
              "from tests.engine.harness import make_services\n"
              "def down(req):\n    raise ProviderUnavailable('anthropic', 'overloaded_error: Overloaded', 529)\n"
              "services, _ = make_services(Settings(state_dir=tempfile.mkdtemp(), profile='local', database_url=url), down)\n"
              f"call = make_call(services, CallScope({run_id!r}, None, None, 'builder', 'claude-haiku-4-5', None))\n"
              "try:\n    call('system', [Message(role='user', content='u')], 10)\nexcept ProviderUnavailable:\n    print('down')\n")
    assert as_worker_with_clock("+10 minutes", pg_url, record) == "down"
    with session_scope(pg_url) as s:
        at = s.scalar(select(ModelCall.created_at).where(ModelCall.run_id == run_id))
        assert abs(((at if at.tzinfo else at.replace(tzinfo=timezone.utc)) - db_now(s)).total_seconds()) < 30
    route = ("from autopack.config import load_config\nfrom autopack.settings import Settings\n"
             "from autopack.db.session import session_scope\nfrom autopack.engine.routing import choose_model\n"
             "cfg = load_config(Settings().config_dir)\nrouting = cfg.strategy.run.routing.model_copy(update={'outage_cooldown_s': %s})\n"
             "with session_scope(url) as s:\n"
             "    print(choose_model(s, cfg.models, routing, role='builder', complexity='low', category='feature',\n"
             "                       high_risk=False, chain=['claude-haiku-4-5', 'gpt-5.4-mini']).model)\n")
    assert as_worker_with_clock("-10 minutes", pg_url, route % 60) == "gpt-5.4-mini"  # inside its cooldown
    time.sleep(1.5)
    assert as_worker_with_clock("-10 minutes", pg_url, route % 1) == "claude-haiku-4-5"  # past it


def _call(db_url: str, run_id: str, provider: str, *, model: str = "x", at: datetime | None = None,
          error: str | None = None, tokens: int = 10) -> None:
    with session_scope(db_url) as s:
        c = ModelCall(run_id=run_id, role="builder", provider=provider, model=model, request_key="k", prompt={},
                      input_tokens=tokens, output_tokens=0, cost_usd=1.0, error=error)
        if at is not None:
            c.created_at = at
        s.add(c)


def test_outage_lookup_does_not_sort_the_providers_whole_history(tmp_path: Path) -> None:
    """The "was the last call an outage" lookup is served by the (provider, created_at) index: by
    ``id`` it read and sorted every call the provider ever made (0.48 s per provider at 1M calls,
    twice per routing decision)."""
    eng = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    Base.metadata.create_all(eng)
    statements: list[tuple[str, object]] = []

    @event.listens_for(eng, "before_cursor_execute")
    def capture(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        statements.append((statement, params))

    cfg = load_config(ROOT / "config")
    with Session(eng) as s:
        provider_state(s, cfg.models, "anthropic", datetime.now(timezone.utc), 60)
    statement, params = statements[-1]
    with eng.connect() as c:
        plan = [str(row[3]) for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]  # type: ignore[arg-type]
    assert not any("TEMP B-TREE" in p for p in plan), plan


def test_failed_attempt_after_a_fallback_records_the_model_that_answered(local_settings, demo_repo: Path) -> None:
    """A failed attempt records the model that answered (and the ones it fell back from), as a built
    one does: it kept the primary, which never answered."""
    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            if req.model == "claude-haiku-4-5":
                raise ProviderUnavailable("anthropic", "overloaded_error: Overloaded", 529)
            return "I cannot help with that."  # no edits at all
        try:
            return stats_model(req)
        except ValueError:  # the Doctor, the planner: nothing to say
            return "{}"

    services, _ = make_services(local_settings, respond)
    strategy = services.config.strategy.model_copy(deep=True)
    strategy.run.routing.backoff_base_s = 0.01
    services.config = services.config.model_copy(update={"strategy": strategy})
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    drive(services, ("start_run", run_id))
    first = phase(view(services, run_id), "stats")["attempt_details"][0]
    assert first["failure_class"] is not None
    with session_scope(local_settings.db_url) as s:
        first_id = s.scalar(select(Attempt.id).join(Phase).where(Phase.run_id == run_id, Attempt.number == 1))
        builder_models = [(c.model, c.error is None) for c in s.scalars(
            select(ModelCall).where(ModelCall.attempt_id == first_id, ModelCall.role == "builder").order_by(ModelCall.id))]
    # The primary was out; every answer the attempt got (the edit rounds) came from the fallback.
    assert builder_models[0] == ("claude-haiku-4-5", False) and {m for m, ok in builder_models[1:]} == {"gpt-5.4-mini"}
    assert first["model"] == "gpt-5.4-mini", first["routing"]
    assert first["routing"].get("fallbacks") == ["gpt-5.4-mini"], first["routing"]


def test_mid_call_fallback_skips_a_model_of_the_provider_that_just_went_out(local_settings, demo_repo: Path) -> None:
    """After openai answered 529 for gpt-5.4-mini, the fallback goes to the next provider's model,
    not to gpt-5.4 (openai again, in the same outage)."""
    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder") and req.model.startswith("gpt-"):
            raise ProviderUnavailable("openai", "overloaded", 529)
        return stats_model(req)

    services, client = make_services(local_settings, respond)
    cfg = services.config.model_copy(deep=True)
    cfg.models.roles["builder"].low = "gpt-5.4-mini"
    cfg.models.roles["builder"].fallback = ["gpt-5.4", "claude-haiku-4-5"]
    cfg.strategy.run.routing.backoff_base_s = 0.01
    services.config = cfg
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    drive(services, ("start_run", run_id))
    first_attempt = [c.model for c in client.calls if c.system.startswith("You are the Builder")][:2]
    assert first_attempt == ["gpt-5.4-mini", "claude-haiku-4-5"], first_attempt


def test_high_risk_phase_retries_its_own_model_after_a_cooldown_outage(local_settings, demo_repo: Path) -> None:
    """Another project's call got a 529 from the provider 5 s ago: a high-risk phase tries its own
    model again (no downgrade) instead of ending the run before any call of its own."""
    services, client = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    other = submit(services, stats_plan("feature"))
    _call(local_settings.db_url, other, "anthropic", error="ProviderUnavailable: anthropic: overloaded (HTTP 529)",
          at=datetime.now(timezone.utc) - timedelta(seconds=5))
    run_id = submit(services, stats_plan("security_auth_change"))
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] != "DONE_FAILED_INFRASTRUCTURE", v["failure_reason"]
    assert any(c.model == "claude-haiku-4-5" for c in client.calls if c.system.startswith("You are the Builder"))
