"""make_call (engine/steps.py): what a model call whose answer was lost costs the budget.

The provider is the local wire-format fake of tests/llm (real HTTP, the real Anthropic adapter): a
call that timed out reading the answer may have been generated and billed, so it is counted at its
worst case, and sent once; a call the provider refused is settled at zero."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from autopack.db.models import BudgetReservation, ModelCall, Run
from autopack.db.session import session_scope
from autopack.engine.ledger import estimate_tokens
from autopack.engine.steps import CallScope, make_call
from autopack.errors import ProviderUnavailable
from autopack.llm.anthropic_client import AnthropicClient
from autopack.llm.base import Message
from tests.engine.harness import make_services, register, stats_model, stats_plan, submit
from tests.llm.fake_provider import FakeProvider, rate_limited, slow

MODEL = "claude-sonnet-4-6"
PROMPT = "write the code"


@pytest.fixture()
def fake():  # type: ignore[no-untyped-def]
    with FakeProvider() as provider:
        yield provider


def _call(local_settings, demo_repo: Path, client: AnthropicClient):  # type: ignore[no-untyped-def]
    services, _ = make_services(local_settings, stats_model)
    services.clients = lambda _model: client  # type: ignore[method-assign]
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    return services, run_id, make_call(services, CallScope(run_id, None, None, "builder", MODEL, None))


def _ledger(services, run_id: str) -> tuple[Run, list[str], list[ModelCall]]:  # type: ignore[no-untyped-def]
    with session_scope(services.db_url) as s:
        run = s.get(Run, run_id)
        states = list(s.scalars(select(BudgetReservation.state).where(BudgetReservation.run_id == run_id)))
        calls = list(s.scalars(select(ModelCall).where(ModelCall.run_id == run_id)))
        s.expunge_all()
        return run, states, calls  # type: ignore[return-value]


def test_an_answer_lost_to_a_timeout_is_sent_once_and_counted_at_its_worst_case(local_settings, demo_repo: Path, fake: FakeProvider) -> None:
    fake.queue(slow(1.0), slow(1.0), slow(1.0), slow(1.0))
    client = AnthropicClient("sk-test", base_url=fake.anthropic_base_url, max_retries=3, timeout_s=0.3)
    services, run_id, call = _call(local_settings, demo_repo, client)
    with pytest.raises(ProviderUnavailable):
        call("system", [Message(role="user", content=PROMPT)], 4096)
    assert len(fake.requests) == 1  # the provider generated one answer, not four
    run, states, calls = _ledger(services, run_id)
    worst_tokens = estimate_tokens("system" + PROMPT) + 4096
    worst_cost = services.config.pricing.cost(MODEL, estimate_tokens("system" + PROMPT), 4096)
    assert states == ["charged"] and (run.tokens_reserved, run.cost_reserved_usd) == (0, 0.0)
    assert run.tokens_used == worst_tokens and run.cost_usd == pytest.approx(worst_cost)
    (recorded,) = calls
    assert recorded.cost_usd == pytest.approx(worst_cost) and "counted at its worst case" in (recorded.error or "")


def test_a_call_the_provider_refused_costs_nothing(local_settings, demo_repo: Path, fake: FakeProvider) -> None:
    fake.queue(rate_limited(), rate_limited())
    client = AnthropicClient("sk-test", base_url=fake.anthropic_base_url, max_retries=1, timeout_s=5)
    services, run_id, call = _call(local_settings, demo_repo, client)
    with pytest.raises(ProviderUnavailable) as info:
        call("system", [Message(role="user", content=PROMPT)], 4096)
    assert not info.value.maybe_billed and len(fake.requests) == 2
    run, states, calls = _ledger(services, run_id)
    assert states == ["settled"] and (run.tokens_used, run.cost_usd, run.tokens_reserved) == (0, 0.0, 0)
    assert calls[0].cost_usd == 0.0


def test_a_prompt_with_a_latin1_file_is_sent_and_settled(local_settings, demo_repo: Path, fake: FakeProvider) -> None:
    """A repository file that is not UTF-8 reaches the prompt as surrogate escapes (Git.read_blob):
    sent with U+FFFD in their place and settled at its usage, not charged at its worst case for a
    request the SDK could not encode."""
    latin1 = "# caf" + b"\xe9".decode("utf-8", "surrogateescape") + "\nx = 1\n"
    client = AnthropicClient("sk-test", base_url=fake.anthropic_base_url, max_retries=0, timeout_s=5)
    services, run_id, call = _call(local_settings, demo_repo, client)
    resp = call("system", [Message(role="user", content=latin1)], 100)
    assert resp.text and fake.requests[0].body["messages"][0]["content"] == "# caf\ufffd\nx = 1\n"
    run, states, calls = _ledger(services, run_id)
    assert states == ["settled"] and calls[0].error is None and len(calls[0].request_key) == 64


def test_a_paid_answer_is_recorded_once_the_database_is_back(local_settings, demo_repo: Path, fake: FakeProvider,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The database goes away just after the provider answered (a restart, a failover): the record
    of the paid call is written once it is back, not lost (the step's next delivery would pay for
    the call again and the first one would be charged at its worst case)."""
    from sqlalchemy.exc import OperationalError

    from autopack.engine import steps

    client = AnthropicClient("sk-test", base_url=fake.anthropic_base_url, max_retries=0, timeout_s=5)
    services, run_id, call = _call(local_settings, demo_repo, client)
    real_settle, down = steps.settle, {"left": 2}

    def settle(*args, **kwargs):  # type: ignore[no-untyped-def]
        if down["left"]:
            down["left"] -= 1
            raise OperationalError("UPDATE reservations ...", {}, Exception("server closed the connection unexpectedly"),
                                   connection_invalidated=True)
        return real_settle(*args, **kwargs)

    monkeypatch.setattr(steps, "settle", settle)
    monkeypatch.setattr(steps, "RECORD_RETRY_S", (0.01, 0.01, 0.01))
    resp = call("system", [Message(role="user", content=PROMPT)], 100)
    assert resp.text and down["left"] == 0 and len(fake.requests) == 1
    run, states, calls = _ledger(services, run_id)
    assert states == ["settled"] and len(calls) == 1 and calls[0].response_text == resp.text
    assert run.tokens_used == resp.usage.input_tokens + resp.usage.output_tokens and run.tokens_reserved == 0


def test_a_database_that_stays_away_fails_the_record_after_the_retries(local_settings, demo_repo: Path, fake: FakeProvider,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from autopack.engine import steps

    client = AnthropicClient("sk-test", base_url=fake.anthropic_base_url, max_retries=0, timeout_s=5)
    services, run_id, call = _call(local_settings, demo_repo, client)
    tries = []

    def settle(*args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append(1)
        raise OperationalError("UPDATE reservations ...", {}, Exception("could not connect"), connection_invalidated=True)

    monkeypatch.setattr(steps, "settle", settle)
    monkeypatch.setattr(steps, "RECORD_RETRY_S", (0.01, 0.01))
    with pytest.raises(OperationalError):
        call("system", [Message(role="user", content=PROMPT)], 100)
    assert len(tries) == 3  # the first try and one per pause; the reservation stays for the reconciler
    assert _ledger(services, run_id)[1] == ["open"]


@pytest.mark.postgres
def test_a_nul_in_a_prompt_or_an_answer_is_recorded_not_fatal(pg_url: str, tmp_path: Path, demo_repo: Path) -> None:
    """PostgreSQL's text refuses NUL: a repository file or a model answer holding one failed the
    call's record after the call was paid for, and the step's error ended the run. The record keeps
    U+FFFD in its place; the caller gets the answer as it came."""
    from tests.engine.harness import on_postgres

    settings, _ = on_postgres(pg_url, tmp_path, demo_repo)
    services, _ = make_services(settings, lambda req: "answer\x00with a NUL \ud83d")
    run_id = submit(services, stats_plan("feature"))
    call = make_call(services, CallScope(run_id, None, None, "builder", MODEL, None))
    resp = call("system\x00", [Message(role="user", content="file with \x00 in it")], 100)
    assert resp.text == "answer\x00with a NUL \ud83d"
    _run, states, calls = _ledger(services, run_id)
    assert states == ["settled"] and len(calls) == 1
    assert calls[0].response_text == "answer\ufffdwith a NUL \ufffd"
    assert calls[0].prompt == {"system": "system\ufffd", "messages": [{"role": "user", "content": "file with \ufffd in it"}]}
