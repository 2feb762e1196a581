"""Both SDK adapters, through the real SDKs, against the local fake provider server."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from autopack.auditor import parse_verdict
from autopack.errors import ProviderError, ProviderUnavailable, RetryableError
from autopack.llm.anthropic_client import AnthropicClient
from autopack.llm.base import LLMClient, LLMRequest, Message
from autopack.llm.openai_client import OpenAIClient
from tests.llm.fake_provider import (
    Behaviour,
    FakeProvider,
    RecordedRequest,
    bad_request,
    disconnect,
    slow,
    ok,
    overloaded,
    rate_limited,
    server_error,
    truncated,
    unauthorized,
)

KEY = "sk-test-SECRET-7f3a9c1e5b2d4680"

Factory = Callable[..., LLMClient]


def _anthropic(fake: FakeProvider, max_retries: int = 2) -> LLMClient:
    return AnthropicClient(KEY, base_url=fake.anthropic_base_url, max_retries=max_retries, timeout_s=10)


def _openai(fake: FakeProvider, max_retries: int = 2) -> LLMClient:
    return OpenAIClient(KEY, base_url=fake.openai_base_url, max_retries=max_retries, timeout_s=10)


ADAPTERS = [pytest.param(_anthropic, id="anthropic"), pytest.param(_openai, id="openai")]


class PatchedProvider(FakeProvider):
    """The fake provider, rewriting each successful answer's body with ``patch`` (when set)."""

    patch: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def _anthropic(self, record: RecordedRequest, b: Behaviour) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        return self._patched(*super()._anthropic(record, b))

    def _openai(self, record: RecordedRequest, b: Behaviour) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        return self._patched(*super()._openai(record, b))

    def _patched(self, status: int, body: dict[str, Any], headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        return status, (self.patch(body) if self.patch is not None and status == 200 else body), headers


@pytest.fixture
def pfake() -> Iterator[PatchedProvider]:
    with PatchedProvider() as server:
        yield server


def _request(**overrides: object) -> LLMRequest:
    fields: dict[str, object] = {
        "model": "model-x",
        "system": "You are the Builder.",
        "messages": [Message(role="user", content="Add a docstring to util.py")],
        "max_tokens": 321,
        "temperature": 0.0,
    }
    fields.update(overrides)
    return LLMRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", ADAPTERS)
def test_success_returns_text_and_reported_usage(fake: FakeProvider, make: Factory) -> None:
    fake.queue(ok("the edit", input_tokens=41, output_tokens=17))
    client = make(fake)

    resp = client.complete(_request())

    assert resp.text == "the edit"
    assert resp.stop_reason == "end"
    assert not resp.truncated
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (41, 17)
    assert resp.model == "model-x"
    assert resp.provider == client.provider
    assert isinstance(client, LLMClient)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("make", ADAPTERS)
def test_key_travels_only_in_the_auth_header(fake: FakeProvider, make: Factory) -> None:
    make(fake).complete(_request())

    (req,) = fake.requests
    assert KEY.encode() not in req.raw
    assert KEY not in req.path
    carrying = [name for name, value in req.headers.items() if KEY in value]
    assert carrying == ["authorization"]
    assert req.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("make", ADAPTERS)
def test_rate_limit_then_success_is_retried(fake: FakeProvider, make: Factory) -> None:
    fake.queue(rate_limited(), ok("after the wait"))

    resp = make(fake).complete(_request())

    assert resp.text == "after the wait"
    assert len(fake.requests) == 2
    assert [r.headers.get("x-stainless-retry-count") for r in fake.requests] == ["0", "1"]


@pytest.mark.parametrize("make", ADAPTERS)
def test_overloaded_529_then_success_is_retried(fake: FakeProvider, make: Factory) -> None:
    fake.queue(overloaded(), ok("recovered"))

    resp = make(fake).complete(_request())

    assert resp.text == "recovered"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("make", ADAPTERS)
def test_persistent_server_error_gives_up_after_configured_retries(fake: FakeProvider, make: Factory) -> None:
    fake.queue(server_error(), server_error(), server_error(), ok("too late"))
    client = make(fake, max_retries=2)

    with pytest.raises(ProviderUnavailable) as info:
        client.complete(_request())

    err = info.value
    assert len(fake.requests) == 3  # one try + two retries
    assert err.status == 500
    assert err.provider == client.provider
    assert isinstance(err, RetryableError)
    text = str(err)
    assert text.startswith(f"{client.provider}: ")
    assert "HTTP 500" in text
    assert "Internal server error" in text
    assert "after 2 retries" in text


@pytest.mark.parametrize("make", ADAPTERS)
def test_persistent_overload_and_rate_limit_are_unavailable(fake: FakeProvider, make: Factory) -> None:
    fake.queue(overloaded(), overloaded())
    with pytest.raises(ProviderUnavailable) as info:
        make(fake, max_retries=1).complete(_request())
    assert info.value.status == 529
    assert "overloaded" in str(info.value)

    fake.queue(rate_limited())
    with pytest.raises(ProviderUnavailable) as info:
        make(fake, max_retries=0).complete(_request())
    assert info.value.status == 429
    assert "rate limited" in str(info.value)
    assert len(fake.requests) == 3


@pytest.mark.parametrize("make", ADAPTERS)
def test_bad_request_is_a_provider_error_and_not_retried(fake: FakeProvider, make: Factory) -> None:
    fake.queue(bad_request("messages: roles must alternate"), ok("never"))
    client = make(fake, max_retries=3)

    with pytest.raises(ProviderError) as info:
        client.complete(_request())

    err = info.value
    assert not isinstance(err, ProviderUnavailable)
    assert err.status == 400
    assert "messages: roles must alternate" in str(err)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("make", ADAPTERS)
def test_x_should_retry_is_obeyed(fake: FakeProvider, make: Factory) -> None:
    """A spend limit is a 429 the server marks ``x-should-retry: false``: not sent again, and a plain
    error, not an outage to wait out; ``true`` is retried whatever the status."""
    spend_limit = Behaviour("error", status=429, error_type="rate_limit_error",
                            error_message="Your organization has reached its monthly spend limit.",
                            headers=(("retry-after-ms", "1"), ("x-should-retry", "false")))
    fake.queue(spend_limit)  # a retry would get the default answer
    with pytest.raises(ProviderError) as info:
        make(fake, max_retries=3).complete(_request())
    assert not isinstance(info.value, ProviderUnavailable) and not info.value.maybe_billed
    assert info.value.status == 429 and "asked not to retry" in str(info.value)
    assert len(fake.requests) == 1

    retry_me = Behaviour("error", status=400, error_type="invalid_request_error", error_message="try again",
                         headers=(("retry-after-ms", "1"), ("x-should-retry", "true")))
    fake.queue(retry_me, ok("the second time"))
    assert make(fake, max_retries=3).complete(_request()).text == "the second time"
    assert len(fake.requests) == 3


@pytest.mark.parametrize("make", ADAPTERS)
def test_truncated_answer_reports_max_tokens(fake: FakeProvider, make: Factory) -> None:
    fake.queue(truncated("half an ans", output_tokens=321))

    resp = make(fake).complete(_request())

    assert resp.stop_reason == "max_tokens"
    assert resp.truncated
    assert resp.text == "half an ans"
    assert resp.usage.output_tokens == 321


def test_an_anthropic_refusal_is_an_incomplete_answer(pfake: PatchedProvider) -> None:
    pfake.patch = lambda body: {**body, "stop_reason": "refusal"}
    pfake.queue(ok('Example: {"verdict": "approve", "issues": []} and now the real'))
    resp = _anthropic(pfake).complete(_request())
    assert resp.stop_reason == "refusal" and resp.incomplete and not resp.truncated
    with pytest.raises(ValueError):  # VerdictError: the stopped answer is no verdict
        parse_verdict(resp.text, truncated=resp.incomplete)


def test_an_openai_content_filter_stop_is_an_incomplete_answer(pfake: PatchedProvider) -> None:
    pfake.patch = lambda body: {**body, "choices": [{**body["choices"][0], "finish_reason": "content_filter"}]}
    pfake.queue(ok('{"verdict": "approve", "issues": []}'))
    resp = _openai(pfake).complete(_request())
    assert resp.stop_reason == "content_filter" and resp.incomplete
    with pytest.raises(ValueError):
        parse_verdict(resp.text, truncated=resp.incomplete)


@pytest.mark.parametrize("make", ADAPTERS)
def test_key_never_in_errors_reprs_or_logs(
    fake: FakeProvider, make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make(fake, max_retries=1)
    assert KEY not in repr(client)
    assert KEY not in str(client)

    # An auth failure whose body echoes the credential, as some real APIs do.
    fake.queue(unauthorized(echo_key=True))
    with pytest.raises(ProviderError) as auth:
        client.complete(_request())
    assert auth.value.status == 401
    assert not isinstance(auth.value, ProviderUnavailable)
    assert "[REDACTED]" in str(auth.value)

    fake.queue(server_error(), server_error())
    with pytest.raises(ProviderUnavailable) as outage:
        client.complete(_request())

    for err in (auth.value, outage.value):
        assert KEY not in str(err)
        assert KEY not in repr(err)
        assert KEY not in "".join(traceback.format_exception(err))
        assert err.__cause__ is None
    logged = "\n".join(
        record.getMessage() + (record.exc_text or "") for record in caplog.records
    )
    assert caplog.records, "the SDK's debug logging was expected to say something"
    assert KEY not in logged
    assert KEY not in caplog.text


@pytest.mark.parametrize("make", ADAPTERS)
def test_connection_error_is_unavailable(fake: FakeProvider, make: Factory) -> None:
    fake.queue(disconnect())

    with pytest.raises(ProviderUnavailable) as info:
        make(fake, max_retries=0).complete(_request())

    assert info.value.status is None
    assert "connection" in str(info.value).lower()
    assert KEY not in str(info.value)


# -- text the SDKs cannot encode ------------------------------------------------------------------

# A repository file that is not UTF-8 reaches a prompt as surrogate escapes (Git.read_blob).
LATIN1_FILE = "# caf" + b"\xe9".decode("utf-8", "surrogateescape") + "\nx = 1\n"


@pytest.mark.parametrize("make", ADAPTERS)
def test_a_prompt_with_surrogate_escapes_is_sent_with_replacement_characters(fake: FakeProvider, make: Factory) -> None:
    resp = make(fake).complete(_request(system="sys " + LATIN1_FILE, messages=[Message(role="user", content=LATIN1_FILE)]))
    assert resp.text and len(fake.requests) == 1
    sent = fake.requests[0].body
    assert "# caf\ufffd\nx = 1\n" in (sent["system"] if make is _anthropic else sent["messages"][0]["content"])
    assert sent["messages"][-1]["content"] == "# caf\ufffd\nx = 1\n"


@pytest.mark.parametrize("make", ADAPTERS)
def test_a_request_that_cannot_be_encoded_is_not_sent_nor_billed(fake: FakeProvider, make: Factory) -> None:
    unchecked = LLMRequest.model_construct(model="model-x", system="", max_tokens=10, temperature=0.0,
                                           messages=[Message.model_construct(role="user", content="\udce9")])
    with pytest.raises(ProviderError) as info:
        make(fake, max_retries=2).complete(unchecked)
    assert not isinstance(info.value, ProviderUnavailable) and not info.value.maybe_billed
    assert "not sent" in str(info.value) and not fake.requests


# -- what may have been billed is not sent again -------------------------------------------------


@pytest.mark.parametrize("make", ADAPTERS)
def test_an_answer_lost_to_a_read_timeout_is_not_asked_for_again(fake: FakeProvider, make: Factory) -> None:
    fake.queue(slow(1.0), slow(1.0), slow(1.0))
    client = (AnthropicClient if make is _anthropic else OpenAIClient)(  # type: ignore[operator]
        KEY, base_url=fake.anthropic_base_url if make is _anthropic else fake.openai_base_url, max_retries=3, timeout_s=0.3)
    with pytest.raises(ProviderUnavailable) as info:
        client.complete(_request())
    assert info.value.maybe_billed and "may have been billed" in str(info.value)
    assert len(fake.requests) == 1  # the SDK's own retries would have sent it four times, each maybe billed


@pytest.mark.parametrize("make", ADAPTERS)
def test_a_dropped_connection_is_maybe_billed_and_not_retried(fake: FakeProvider, make: Factory) -> None:
    fake.queue(disconnect(), disconnect())
    with pytest.raises(ProviderUnavailable) as info:
        make(fake, max_retries=2).complete(_request())
    assert info.value.maybe_billed and len(fake.requests) == 1


@pytest.mark.parametrize("make", ADAPTERS)
def test_a_connection_never_made_is_retried_and_not_billed(make: Factory) -> None:
    from autopack.procs import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    client = (AnthropicClient(KEY, base_url=closed, max_retries=1, timeout_s=5) if make is _anthropic
              else OpenAIClient(KEY, base_url=closed + "/v1", max_retries=1, timeout_s=5))
    with pytest.raises(ProviderUnavailable) as info:
        client.complete(_request())
    assert not info.value.maybe_billed and "connection failed after 1 retries" in str(info.value)


@pytest.mark.parametrize("make", ADAPTERS)
def test_an_exception_raised_into_the_call_is_not_taken_for_an_outage(fake: FakeProvider, make: Factory) -> None:
    import signal

    class SoftLimit(Exception):  # what Celery's soft time limit raises into a running task
        pass

    def interrupt(_sig: int, _frame: object) -> None:
        raise SoftLimit("soft time limit")

    fake.queue(slow(2.0))
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(SoftLimit):
            make(fake, max_retries=3).complete(_request())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(fake.requests) == 1  # not sent again under the same budget


# -- adapter-specific request shape ------------------------------------------------------------


def test_anthropic_request_shape(fake: FakeProvider) -> None:
    req = _request(
        messages=[
            Message(role="user", content="first"),
            Message(role="assistant", content="reply"),
            Message(role="user", content="second"),
        ],
        temperature=0.7,
    )
    _anthropic(fake).complete(req)

    (seen,) = fake.requests
    assert seen.path == "/v1/messages"
    assert seen.body["model"] == "model-x"
    assert seen.body["system"] == "You are the Builder."
    assert seen.body["max_tokens"] == 321
    assert seen.body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    # API version 2026-10-21 (the SDK's default) refuses sampling parameters.
    assert "temperature" not in seen.body


def test_anthropic_without_system_sends_none(fake: FakeProvider) -> None:
    _anthropic(fake).complete(_request(system=""))
    assert "system" not in fake.requests[0].body


def test_anthropic_counts_cached_input_tokens(fake: FakeProvider) -> None:
    # Billed input = input_tokens + cache creation + cache reads.
    fake.queue(ok(input_tokens=5, output_tokens=2, cache_creation_input_tokens=100, cache_read_input_tokens=1000))
    resp = _anthropic(fake).complete(_request())
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (1105, 2)


def test_openai_request_shape(fake: FakeProvider) -> None:
    _openai(fake).complete(_request(temperature=0.25))

    (seen,) = fake.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "model-x"
    assert seen.body["messages"][0] == {"role": "system", "content": "You are the Builder."}
    assert seen.body["messages"][1:] == [{"role": "user", "content": "Add a docstring to util.py"}]
    assert seen.body["max_completion_tokens"] == 321
    assert "max_tokens" not in seen.body
    assert seen.body["temperature"] == 0.25


def test_openai_reasoning_model_gets_its_effort_and_no_temperature(fake: FakeProvider) -> None:
    client = OpenAIClient(KEY, base_url=fake.openai_base_url, max_retries=0, reasoning_effort="none", send_temperature=False)

    client.complete(_request(temperature=0.0))
    _openai(fake).complete(_request(temperature=0.0))  # a model configured without either

    reasoning, plain = fake.requests
    assert reasoning.body["reasoning_effort"] == "none" and "temperature" not in reasoning.body
    assert reasoning.body["max_completion_tokens"] == 321
    assert "reasoning_effort" not in plain.body and plain.body["temperature"] == 0.0


def test_an_answer_without_usage_books_the_budgets_high_estimate(fake: FakeProvider) -> None:
    """A compatible server that reports no usage: the call is booked at the same high estimate that
    bounds its reservation (every byte a token but letters and blanks), not at four characters a
    token, which undercounts CJK text about twelvefold."""
    from dataclasses import replace

    from autopack.engine.ledger import estimate_tokens

    answer = "答案" * 50
    fake.queue(replace(ok(answer), report_usage=False))
    prompt = "日本語のプロンプト" * 40
    resp = OpenAIClient(KEY, base_url=fake.openai_base_url, max_retries=0, provider="local").complete(
        _request(system=prompt, messages=[Message(role="user", content="go")], max_tokens=5000))
    assert resp.usage.input_tokens == estimate_tokens(prompt + "go") >= 3 * len(prompt)
    assert resp.usage.output_tokens == estimate_tokens(answer) >= 3 * len(answer)
    fake.queue(replace(ok(answer), report_usage=False))
    capped = OpenAIClient(KEY, base_url=fake.openai_base_url, max_retries=0, provider="local").complete(_request(max_tokens=10))
    assert capped.usage.output_tokens == 10  # never more than the answer could hold


@pytest.mark.parametrize("usage", [
    {"total_tokens": 120},
    {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
], ids=["only-total", "zeros", "nulls"])
def test_a_usage_without_counts_books_the_high_estimate(pfake: PatchedProvider, usage: dict[str, Any]) -> None:
    from autopack.engine.ledger import estimate_tokens

    pfake.patch = lambda body: {**body, "usage": usage}
    pfake.queue(ok("a long enough answer with several words in it"))
    resp = _openai(pfake).complete(_request())
    assert resp.usage.input_tokens == estimate_tokens("You are the Builder.Add a docstring to util.py")
    assert resp.usage.output_tokens == estimate_tokens("a long enough answer with several words in it")


# -- answers the adapter cannot read -------------------------------------------------------------


def test_an_answer_of_text_parts_is_read_as_their_text(pfake: PatchedProvider) -> None:
    # Some compatible servers (Mistral's reasoning models, proxies) send content as a list of parts.
    pfake.patch = lambda body: {**body, "choices": [{**body["choices"][0], "message": {
        "role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "hello"},
                                         {"type": "text", "text": " world"}]}}]}
    assert _openai(pfake).complete(_request()).text == "hello world"


@pytest.mark.parametrize("make, patch", [
    pytest.param(_anthropic, lambda body: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                 id="anthropic-200-with-an-error"),  # as some Anthropic-compatible gateways send
    pytest.param(_openai, lambda body: {**body, "choices": [{**body["choices"][0], "message": {"role": "assistant", "content": 42}}]},
                 id="openai-content-of-another-type"),
])
def test_an_unreadable_answer_is_a_maybe_billed_provider_error(pfake: PatchedProvider, make: Factory,
                                                               patch: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    pfake.patch = patch
    with pytest.raises(ProviderError) as info:
        make(pfake).complete(_request())
    assert info.value.maybe_billed and "unreadable answer" in str(info.value)
    assert len(pfake.requests) == 1


def test_openai_compatible_uses_max_tokens_and_its_provider_name(fake: FakeProvider) -> None:
    client = OpenAIClient(KEY, base_url=fake.openai_base_url, max_retries=0, provider="openai_compatible")

    resp = client.complete(_request(system=""))

    (seen,) = fake.requests
    assert seen.body["max_tokens"] == 321
    assert "max_completion_tokens" not in seen.body
    assert [m["role"] for m in seen.body["messages"]] == ["user"]
    assert resp.provider == "openai_compatible"
    fake.queue(server_error())
    with pytest.raises(ProviderUnavailable, match=r"^openai_compatible: "):
        client.complete(_request())
