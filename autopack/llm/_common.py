"""Helpers shared by the SDK adapters: status classification, secret redaction, estimates."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from autopack.llm.base import LLMRequest

if TYPE_CHECKING:
    from autopack.errors import ProviderError

# Statuses the SDKs retry themselves (408 timeout, 409 lock timeout, 429 rate limit, 5xx incl. 529
# overloaded). When one of them still ends a call, the provider is unavailable for now: the caller
# may try again later or fall back to another provider.
_PASSING_STATUSES = frozenset({408, 409, 429})

REDACTED = "[REDACTED]"


def is_passing_status(status: int | None) -> bool:
    """True for HTTP statuses that mean "try again later" rather than "this request is wrong"."""
    return status is not None and (status in _PASSING_STATUSES or status >= 500)


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each non-empty secret in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def estimate_tokens(text: str) -> int:
    """A rough token count (one token per four characters). An estimate, never a bill."""
    return len(text) // 4


def estimate_input_tokens(request: LLMRequest) -> int:
    return estimate_tokens(request.system + "".join(m.content for m in request.messages))


def status_phrase(status: int | None) -> str:
    if status == 429:
        return "rate limited"
    if status == 529:
        return "overloaded"
    if status == 408:
        return "request timeout"
    if status == 409:
        return "conflict (lock timeout)"
    if status is not None and status >= 500:
        return "server error"
    if status == 401:
        return "authentication failed"
    if status == 403:
        return "permission denied"
    if status == 404:
        return "not found"
    if status is not None and 400 <= status < 500:
        return "request rejected"
    return "error"


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def status_error(provider: str, status: int, kind: str | None, api_message: str | None, sdk_message: str,
                 request_id: str | None, retries: str | None, clean: Callable[[str], str]) -> ProviderError:
    """The typed error for an HTTP error a provider answered with (after the SDK's retries):
    ``ProviderUnavailable`` for passing faults (429, 5xx, 529), ``ProviderError`` otherwise."""
    from autopack.errors import ProviderError, ProviderUnavailable

    parts = [status_phrase(status)]
    if kind and kind != parts[0]:
        parts.append(str(kind))
    parts.append(api_message or short(sdk_message))
    message = ": ".join(parts)
    if request_id:
        message += f" [request-id {request_id}]"
    if not is_passing_status(status):
        return ProviderError(provider, clean(message), status)
    if retries is not None:  # the SDK stamps each attempt with how many retries preceded it
        message += f" after {retries} retries"
    return ProviderUnavailable(provider, clean(message), status)
