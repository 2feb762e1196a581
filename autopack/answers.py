"""The one JSON object in a model's answer (bare or fenced), as a dict or as a pydantic model. Pure."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
M = TypeVar("M", bound=BaseModel)


def json_object(text: str) -> dict[str, Any]:
    """The outermost ``{...}`` of ``text`` parsed as a JSON object; ``ValueError`` when there is none."""
    match = _OBJECT.search(text)
    if not match:
        raise ValueError("no JSON object in the answer")
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):  # pragma: no cover - the regex only matches objects
        raise ValueError("the answer's JSON is not an object")
    return value


def parse_answer(text: str, model: type[M], who: str, error: type[Exception]) -> M:
    """The answer's JSON object validated as ``model``; ``error`` naming ``who`` answered otherwise."""
    try:
        return model.model_validate(json_object(text))
    except ValueError as exc:  # ValidationError is a ValueError too
        kind = "malformed" if isinstance(exc, ValidationError) else "unusable"
        raise error(f"{who}'s answer is {kind}: {exc}") from None
