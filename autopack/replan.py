"""Re-planning a phase that keeps failing the same way. Pure: when to re-plan, and parsing the
rewritten goal and approach."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopack.normalize import similarity


@dataclass(frozen=True)
class Failure:
    failure_class: str
    signature: str


def should_replan(failures: list[Failure], replans_done: int, threshold: float = 0.85, max_replans: int = 1) -> tuple[bool, str]:
    """Re-plan when the last two consecutive failures are the same kind and their normalised
    signatures are alike beyond ``threshold``, at most ``max_replans`` times per phase."""
    if replans_done >= max_replans or len(failures) < 2:
        return False, ""
    a, b = failures[-2], failures[-1]
    if a.failure_class != b.failure_class:
        return False, ""
    score = similarity(a.signature, b.signature)
    if score < threshold:
        return False, ""
    return True, f"the last two attempts failed the same way ({a.failure_class}, similarity {score:.2f})"


class Replanned(BaseModel):
    model_config = ConfigDict(extra="ignore")

    goal: str = Field(min_length=1)
    approach: str = ""


class ReplanError(ValueError):
    """The planner's answer is not a usable plan."""


def parse_replan(text: str) -> Replanned:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        raise ReplanError("no JSON object in the planner's answer")
    try:
        return Replanned.model_validate(json.loads(match.group(0)))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ReplanError(f"planner answer is malformed: {exc}") from None
