"""OpenAI adapter: ``LLMClient`` over the official ``openai`` SDK (Chat Completions).

The same class serves any OpenAI-compatible endpoint (local servers, GLM, Gemini's compatible API):
pass its ``base_url`` and a ``provider`` name such as ``"openai_compatible"``.

Retries are this adapter's own, as in the Anthropic adapter (the SDK's are off): 408/409/429/5xx
and connections that could not be made, honouring ``retry-after-ms`` / ``retry-after`` up to a
minute, else exponential backoff from 0.5 s; a request whose answer was lost is not retried (it may
have been billed) and its error says ``maybe_billed``. When it gives up this adapter raises
``ProviderUnavailable`` (passing faults) or ``ProviderError`` (the request is wrong).
Messages never carry the API key and the SDK's exception is not chained (its request holds the key).

The answer length cap is sent as ``max_completion_tokens`` to OpenAI itself (``max_tokens`` is
deprecated there and refused by reasoning models) and as ``max_tokens`` to any other endpoint, which
is what OpenAI-compatible servers universally accept; ``token_param`` overrides the choice.

Reasoning models (the GPT-5 family, the o-series) take ``reasoning_effort`` (sent when configured)
and count their thinking against that cap; most refuse a temperature other than their default, so
``send_temperature=False`` leaves it out.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import openai

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

_FINISH_REASONS = {"stop": "end", "length": "max_tokens"}

TokenParam = Literal["max_tokens", "max_completion_tokens"]


class OpenAIClient:
    """One ``chat.completions.create`` call per ``complete``."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        provider: str = "openai",
        *,
        token_param: TokenParam | None = None,
        send_temperature: bool = True,
        reasoning_effort: str | None = None,
    ) -> None:
        if not api_key:
            raise ConfigError(f"{provider}: the API key is empty")
        if max_retries < 0:
            raise ConfigError(f"{provider}: max_retries must be >= 0")
        self.provider = provider
        self._secret = api_key
        self._base_url = base_url
        self._max_retries = max_retries
        self._token_param: TokenParam = token_param or (
            "max_completion_tokens" if provider == "openai" else "max_tokens"
        )
        self._send_temperature = send_temperature
        self._reasoning_effort = reasoning_effort
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,  # complete() retries what is safe to retry (see the module's docstring)
            timeout=timeout_s,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIClient(provider={self.provider!r}, base_url={self._base_url!r}, "
            f"max_retries={self._max_retries})"
        )

    def complete(self, request: LLMRequest) -> LLMResponse:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            self._token_param: request.max_tokens,
        }
        if self._send_temperature:
            kwargs["temperature"] = request.temperature
        if self._reasoning_effort is not None:
            kwargs["reasoning_effort"] = self._reasoning_effort
        completion = self._send(kwargs)
        try:
            return self._response(request, completion)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            raise unreadable_answer(self.provider, exc, self._clean) from None

    def _response(self, request: LLMRequest, completion: Any) -> LLMResponse:
        if not completion.choices:
            raise ProviderError(self.provider, "the answer holds no choices")
        choice = completion.choices[0]
        content = choice.message.content
        if isinstance(content, list):  # some compatible servers send a list of parts: its text parts
            content = "".join(part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text")
        text = content or ""
        raw_finish = choice.finish_reason or "unknown"
        stop_reason = _FINISH_REASONS.get(raw_finish, raw_finish)
        if not text and getattr(choice.message, "refusal", None):
            stop_reason = "refusal"
        reported = completion.usage
        usage = booked_usage(self.provider, request, text, None if reported is None else reported.prompt_tokens,
                             None if reported is None else reported.completion_tokens)
        return LLMResponse(
            text=text,
            stop_reason=stop_reason,
            usage=usage,
            model=completion.model or request.model,
            provider=self.provider,
        )

    def _send(self, kwargs: dict[str, Any]) -> Any:
        return send_with_retries(lambda headers: self._client.chat.completions.create(**kwargs, extra_headers=headers), sdk=openai,
                                 provider=self.provider, max_retries=self._max_retries, clean=self._clean,
                                 status_error=self._status_error)

    # -- errors ---------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        return redact(text, self._secret)

    def _status_error(self, err: openai.APIStatusError, passing: bool | None = None) -> ProviderError:
        body = err.body if isinstance(err.body, dict) else {}
        api_message = body.get("message") if isinstance(body.get("message"), str) else None
        return status_error(self.provider, err.status_code, body.get("code") or body.get("type"), api_message, err.message,
                            err.request_id, err.response.request.headers.get("x-stainless-retry-count"), self._clean,
                            passing=passing)


