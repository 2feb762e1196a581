"""The one JSON object in a model's answer (bare or fenced), as a dict or as a pydantic model. Pure."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_DECODER = json.JSONDecoder()


def clean_text(text: str) -> str:
    """``text`` without NUL characters and with lone UTF-16 surrogates replaced by U+FFFD.

    Both are valid in a JSON string (``"\\u0000"``, ``"\\ud83d"``) but neither can be stored: a
    surrogate cannot be encoded as UTF-8 and PostgreSQL's text columns refuse NUL. A valid pair of
    surrogates is joined into its character."""
    return without_surrogates(text.replace("\x00", ""))


def without_surrogates(text: str) -> str:
    """``text`` with lone UTF-16 surrogates replaced by U+FFFD (a valid pair is joined into its
    character); ``text`` itself when it holds none. A non-UTF-8 file read with ``surrogateescape``
    holds such escapes, which no UTF-8 encoder (an SDK's, a cassette's) accepts."""
    if _has_surrogate(text):
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate, the one thing UTF-8 cannot encode: one C pass (this runs on
    every model call's prompt and answer), not a Python loop over its characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def storable(text: str) -> str:
    """``text`` as a database can store it: a NUL (PostgreSQL's text refuses it) or a lone surrogate
    (no UTF-8 for it) becomes U+FFFD. For the record of a model's prompt or answer, whose raw text
    goes on to its reader unchanged."""
    if "\x00" not in text and not _has_surrogate(text):
        return text
    return clean_text(text.replace("\x00", "\ufffd"))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): _clean(v) for k, v in value.items()}
    return value


def json_object(text: str) -> dict[str, Any]:
    """The last complete top-level JSON object in ``text``, its strings cleaned (:func:`clean_text`);
    ``ValueError`` when there is none.

    An answer that restates the format (``like {"verdict": "approve"}``) before its own object is
    read by its own object; a span from the first ``{`` to the last ``}`` is never taken as one."""
    found: dict[str, Any] | None = None
    error: str | None = None
    i = text.find("{")
    while i != -1:
        try:
            value, end = _DECODER.raw_decode(text, i)
        except RecursionError:
            raise ValueError("the JSON nests too deeply") from None
        except json.JSONDecodeError as exc:
            error = error or str(exc)
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict):
            found = value
        i = text.find("{", end)
    if found is None:
        raise ValueError(f"invalid JSON: {error}" if error else "no JSON object in the answer")
    try:
        return _clean(found)  # type: ignore[no-any-return]
    except RecursionError:
        raise ValueError("the JSON nests too deeply") from None


def unfinished(stop_reason: str) -> str:
    """Why an answer that stopped for ``stop_reason`` is not a finished one, in words."""
    if stop_reason == "max_tokens":
        return "it was cut off at the token limit"
    return f"the provider stopped it before its end ({stop_reason})"


class TruncatedAnswer(ValueError):
    """The model was stopped at its token limit: its answer is not complete."""


def parse_answer(text: str, model: type[M], who: str, error: type[Exception], *, truncated: bool = False,
                 stop_reason: str = "max_tokens") -> M:
    """The answer's JSON object validated as ``model``; ``error`` naming ``who`` answered otherwise.
    A ``truncated`` answer (not finished: stopped at max_tokens, or by the provider for
    ``stop_reason``, a refusal or a content filter say) is refused whatever it holds: the object in
    it may be an example or a draft the model had not finished with."""
    try:
        if truncated:
            raise TruncatedAnswer(unfinished(stop_reason))
        return model.model_validate(json_object(text))
    except ValueError as exc:  # ValidationError is a ValueError too
        kind = "malformed" if isinstance(exc, ValidationError) else "unusable"
        raise error(f"{who}'s answer is {kind}: {exc}") from None
