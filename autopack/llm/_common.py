"""Helpers shared by the SDK adapters: status classification, secret redaction, estimates."""

from __future__ import annotations

from autopack.llm.base import LLMRequest

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
