"""The one JSON object in a model's answer (bare or fenced). Pure."""

from __future__ import annotations

import json
import re
from typing import Any

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


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
