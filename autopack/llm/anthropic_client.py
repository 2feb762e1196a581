"""Anthropic adapter: ``LLMClient`` over the official ``anthropic`` SDK (Messages API).

Retries are this adapter's own (the SDK's are off): 408/409/429/5xx (529 "overloaded" included),
and connections that could not be made, up to ``max_retries`` times, waiting what the server's
``retry-after-ms`` / ``retry-after`` header asks for, else an exponential backoff from 0.5 s. A
request whose answer was lost (a read timeout, a dropped connection) is **not** retried: the
provider may have generated and billed it, and only the caller, which reserved the budget for one
answer, can decide to pay for another; the error says ``maybe_billed``. When it gives up this
adapter raises ``ProviderUnavailable`` (passing faults) or ``ProviderError`` (the request itself is
wrong: 400, 401, 403, 404, 413, ...). Messages never carry the API key, and the SDK's exception is not chained
(it holds the HTTP request, whose headers carry the key).

Sampling parameters: the SDK (2.x) speaks API version 2026-10-21, which removed ``temperature``,
``top_p`` and ``top_k`` (sending them is answered 400). ``LLMRequest.temperature`` is therefore
not sent to Anthropic.
"""

from __future__ import annotations

import logging
from typing import Any

import anthropic

from autopack.errors import ConfigError, ProviderError
from autopack.llm._common import (
    booked_usage,
    send_with_retries,
    redact,
    status_error,
    unreadable_answer,
)
from autopack.llm.base import LLMRequest, LLMResponse

log = logging.getLogger(__name__)

_STOP_REASONS = {
    "end_turn": "end",
    "stop_sequence": "end",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
}


class AnthropicClient:
    """One ``messages.create`` call per ``complete``. ``provider`` names the entry (default anthropic)."""

    provider: str = "anthropic"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        *,
        provider: str = "anthropic",
    ) -> None:
        if not api_key:
            raise ConfigError("anthropic: the API key is empty")
        if max_retries < 0:
            raise ConfigError("anthropic: max_retries must be >= 0")
        self.provider = provider
        self._secret = api_key
        self._base_url = base_url
        self._max_retries = max_retries
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,  # complete() retries what is safe to retry (see the module's docstring)
            timeout=timeout_s,
        )

    def __repr__(self) -> str:
        return f"AnthropicClient(provider={self.provider!r}, base_url={self._base_url!r}, max_retries={self._max_retries})"

    def complete(self, request: LLMRequest) -> LLMResponse:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.system:
            kwargs["system"] = request.system
        message = self._send(kwargs)
        try:
            return self._response(request, message)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            raise unreadable_answer(self.provider, exc, self._clean) from None

    def _response(self, request: LLMRequest, message: Any) -> LLMResponse:
        text = "".join(block.text for block in message.content if getattr(block, "type", None) == "text")
        usage = message.usage
        input_tokens = (
            (usage.input_tokens or 0)
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        raw_stop = message.stop_reason or "unknown"
        return LLMResponse(
            text=text,
            stop_reason=_STOP_REASONS.get(raw_stop, raw_stop),
            usage=booked_usage(self.provider, request, text, input_tokens, usage.output_tokens),
            model=message.model or request.model,
            provider=self.provider,
        )

    def _send(self, kwargs: dict[str, Any]) -> Any:
        return send_with_retries(lambda headers: self._client.messages.create(**kwargs, extra_headers=headers), sdk=anthropic,
                                 provider=self.provider, max_retries=self._max_retries, clean=self._clean,
                                 status_error=self._status_error)

    # -- errors ---------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        return redact(text, self._secret)

    def _status_error(self, err: anthropic.APIStatusError, passing: bool | None = None) -> ProviderError:
        return status_error(self.provider, err.status_code, err.type, err.api_message, err.message, err.request_id,
                            err.response.request.headers.get("x-stainless-retry-count"), self._clean, passing=passing)


