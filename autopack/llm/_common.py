"""Helpers shared by the SDK adapters: status classification, secret redaction, estimates."""

from __future__ import annotations

import email.utils
import logging
import random
import string
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from autopack.llm.base import LLMRequest, Usage

if TYPE_CHECKING:
    from autopack.errors import ProviderError

# Statuses the adapters retry (408 timeout, 409 lock timeout, 429 rate limit, 5xx incl. 529
# overloaded). When one of them still ends a call, the provider is unavailable for now: the caller
# may try again later or fall back to another provider.
_PASSING_STATUSES = frozenset({408, 409, 429})

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
T = TypeVar("T")
# The longest wait a retry-after header is honoured for; a longer one (or none) gets the backoff.
MAX_RETRY_AFTER_S = 60.0


def retry_wait(headers: Mapping[str, str], retries_taken: int) -> float:
    """Seconds to wait before retry ``retries_taken + 1``: what the answer's ``retry-after-ms`` or
    ``retry-after`` (seconds or an HTTP date) asks for, up to a minute, else an exponential backoff
    from 0.5 s to 8 s with jitter (the SDKs' own rule)."""
    asked: float | None = None
    try:
        if headers.get("retry-after-ms") is not None:
            asked = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after") is not None:
            raw = headers["retry-after"]
            try:
                asked = float(raw)
            except ValueError:
                when = email.utils.parsedate_to_datetime(raw)
                asked = when.timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        asked = None
    if asked is not None and 0 < asked <= MAX_RETRY_AFTER_S:
        return asked
    return min(0.5 * 2.0**retries_taken, 8.0) * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not security


def _http_error_names(exc: BaseException | None) -> set[str]:
    """The class names of ``exc``'s HTTP library exception classes (the SDKs wrap ``httpx``'s, or
    ``httpx2``'s in their newer releases: the names are the same)."""
    if exc is None:
        return set()
    return {c.__name__ for c in type(exc).__mro__ if c.__module__.split(".")[0] in ("httpx", "httpx2")}


def never_sent(exc: BaseException) -> bool:
    """Whether an SDK's connection error means the request never reached the provider (no
    connection could be made), so nothing can have been generated or billed."""
    return bool(_http_error_names(exc.__cause__) & {"ConnectError", "ConnectTimeout"})


def foreign_cause(exc: BaseException) -> BaseException | None:
    """What the SDK wrapped as a connection error when it was not one: an exception raised into the
    call from outside (Celery's soft time limit, say), which must not be taken for an outage."""
    cause = exc.__cause__
    return cause if cause is not None and "HTTPError" not in _http_error_names(cause) else None


def is_passing_status(status: int | None) -> bool:
    """True for HTTP statuses that mean "try again later" rather than "this request is wrong"."""
    return status is not None and (status in _PASSING_STATUSES or status >= 500)


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each non-empty secret in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


_LETTERS_AND_BLANKS = (string.ascii_letters + string.whitespace).encode()


def bound_tokens(text: str) -> int:
    """A deliberately high estimate of the prompt's token count, the input side of a call's worst
    case. A token holds at least one byte, so every character but ASCII letters and blanks counts as
    many tokens as its UTF-8 bytes (a CJK character 3, an emoji 4; digits and punctuation 1), and
    letters and blanks count a token per 2.5 (prose and code run 3 to 4 to a token, the newer
    tokenizers' about 30 % more tokens included). Only a text of long runs of random letters can
    come out higher than this."""
    data = text.encode("utf-8", errors="surrogatepass")  # one C pass each: this runs for every model call
    words = len(data) - len(data.translate(None, _LETTERS_AND_BLANKS))
    return -(-words * 2 // 5) + (len(data) - words) + 16


def estimate_tokens(text: str) -> int:
    """A rough token count (one token per four characters), for scripted models' made-up usage."""
    return len(text) // 4


def estimate_input_tokens(request: LLMRequest) -> int:
    return estimate_tokens(request.system + "".join(m.content for m in request.messages))


def booked_usage(provider: str, request: LLMRequest, text: str, input_tokens: int | None,
                 output_tokens: int | None) -> Usage:
    """The usage to book for an answer whose provider reported ``input_tokens`` and
    ``output_tokens`` (None: not reported). Budgets must not settle at zero, nor below what was
    used: a count that is missing, null or zero (no prompt is zero tokens; no answer with text is)
    is taken for unreported, and the same high estimate that bounds the call's reservation is
    booked in its place (some compatible servers send no usage, or only ``total_tokens``, or
    zeros)."""
    unreported: list[str] = []
    if not input_tokens:
        unreported.append("input")
        input_tokens = bound_tokens(request.system + "".join(m.content for m in request.messages))
    if not output_tokens:
        if text:
            unreported.append("output")
            output_tokens = min(bound_tokens(text), request.max_tokens)
        else:
            output_tokens = 0
    if unreported:
        log.warning("%s reported no %s token count for model %s; booking the budgets' high estimate",
                    provider, " or ".join(unreported), request.model)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens)


def unreadable_answer(provider: str, exc: Exception, clean: Callable[[str], str]) -> ProviderError:
    """The error for an answer the adapter could not read (a 200 that holds an error object, fields
    of another shape): it was generated, so it may have been billed."""
    from autopack.errors import ProviderError

    return ProviderError(provider, clean(f"unreadable answer: {type(exc).__name__}: {short(str(exc))}"), maybe_billed=True)


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
                 request_id: str | None, retries: str | None, clean: Callable[[str], str], *,
                 passing: bool | None = None) -> ProviderError:
    """The typed error for an HTTP error a provider answered with (after the adapter's retries):
    ``ProviderUnavailable`` for passing faults (429, 5xx, 529), ``ProviderError`` otherwise.
    ``passing=False``: the server said not to retry (``x-should-retry: false``, a spend limit say),
    a plain ``ProviderError`` whatever the status."""
    from autopack.errors import ProviderError, ProviderUnavailable

    if passing is None:
        passing = is_passing_status(status)

    parts = [status_phrase(status)]
    if kind and kind != parts[0]:
        parts.append(str(kind))
    parts.append(api_message or short(sdk_message))
    message = ": ".join(parts)
    if request_id:
        message += f" [request-id {request_id}]"
    if not passing:
        if is_passing_status(status):
            message += " (the provider asked not to retry)"
        return ProviderError(provider, clean(message), status)
    if retries is not None:  # the SDK stamps each attempt with how many retries preceded it
        message += f" after {retries} retries"
    return ProviderUnavailable(provider, clean(message), status)


def send_with_retries(create: Callable[[dict[str, str]], T], *, sdk: ModuleType, provider: str, max_retries: int,
                      clean: Callable[[str], str], status_error: Callable[[Any, bool | None], ProviderError]) -> T:
    """``create(headers)`` (an SDK's create call, its own retries off), retried where that cannot
    bill twice: answers with a passing status (408/409/429/5xx) and connections never made, up to
    ``max_retries`` times. The server's ``x-should-retry`` header overrides the status: ``false``
    (a spend limit, say) is not retried and raises a plain ``ProviderError`` (no outage), ``true``
    is retried. An answer lost on the way (a read timeout, a dropped connection, a body that could
    not be read) is not asked for again: the error says ``maybe_billed``. A request that cannot be
    encoded is never sent: a ``ProviderError``, not billed. ``sdk`` is the ``anthropic`` or
    ``openai`` module (both name their errors alike); ``status_error(err, passing)`` builds the
    error for an error status (``passing`` None: by the status)."""
    from autopack.errors import ProviderError, ProviderUnavailable

    for retries in range(max_retries + 1):
        last = retries == max_retries
        try:
            return create({"x-stainless-retry-count": str(retries)})  # what the SDK would stamp, for the server's logs
        except sdk.APIStatusError as err:
            should_retry = (err.response.headers.get("x-should-retry") or "").strip().lower()
            if should_retry == "false":
                raise status_error(err, False) from None
            if last or not (should_retry == "true" or is_passing_status(err.status_code)):
                raise status_error(err, None) from None
            time.sleep(retry_wait(err.response.headers, retries))
        except UnicodeEncodeError as err:  # raised while the SDK builds the request: nothing was sent
            raise ProviderError(provider, clean(f"the request could not be encoded ({err.encoding}: {err.reason} at "
                                                f"position {err.start}); it was not sent")) from None
        except sdk.APIConnectionError as err:
            outside = foreign_cause(err)
            if outside is not None:
                raise outside from None
            unsent = never_sent(err)
            if last or not unsent:
                what = "timed out" if isinstance(err, sdk.APITimeoutError) else "connection failed"
                how = f"after {retries} retries" if unsent else "(the request was sent: not retried, it may have been billed)"
                raise ProviderUnavailable(provider, clean(f"{what} {how}: {err.message}"), maybe_billed=not unsent) from None
            time.sleep(retry_wait({}, retries))
        except sdk.APIError as err:  # an answer the SDK could not read: it was generated, maybe billed
            raise ProviderError(provider, clean(f"unexpected response: {err.message}"), maybe_billed=True) from None
    raise AssertionError("unreachable")
