"""Re-planning a phase that keeps failing the same way. Pure: when to re-plan, and parsing the
rewritten goal and approach."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from autopack.answers import parse_answer
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


# Failures that say the phase's plan is wrong rather than its code: no fix within the old plan will
# do, so the phase is re-planned at once. (kind, pattern over the failure's text)
FATAL_TYPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("wrong stack", re.compile(r"ModuleNotFoundError: No module named '[^'.]+'|command not found|"
                               r"No matching distribution found")),
    ("schema mismatch", re.compile(r"no such (?:column|table)|(?:column|relation) \S+ does not exist|"
                                   r"schema mismatch|has no column named", re.IGNORECASE)),
    ("contract wrong", re.compile(r"ImportError: cannot import name '[^']+'|"
                                  r"TypeError: \S+\(\) (?:got an unexpected keyword argument|"
                                  r"missing \d+ required (?:positional|keyword-only) argument|"
                                  r"takes \d+ positional arguments? but \d+ (?:was|were) given)")),
)


def fatal_type(text: str) -> str | None:
    """The kind of fatal failure ``text`` shows (wrong stack, schema mismatch, contract wrong), or None."""
    for kind, pattern in FATAL_TYPES:
        if pattern.search(text):
            return kind
    return None


def should_replan_now(failures: list[Failure], replans_done: int, threshold: float = 0.85,
                      max_replans: int = 1) -> tuple[bool, str]:
    """``should_replan``, or at once when the latest failure is of a fatal type."""
    go, why = should_replan(failures, replans_done, threshold, max_replans)
    if go or replans_done >= max_replans or not failures:
        return go, why
    kind = fatal_type(failures[-1].signature)
    if kind is None:
        return False, ""
    return True, f"a fatal failure type was seen ({kind}): the plan, not the code, needs to change"


class Replanned(BaseModel):
    model_config = ConfigDict(extra="ignore")

    goal: str = Field(min_length=1)
    approach: str = ""

    @field_validator("goal", "approach")
    @classmethod
    def _strip(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "goal" and not value.strip():
            raise ValueError("the goal is blank")  # it heads the phase's commit message
        return value.strip()


class ReplanError(ValueError):
    """The planner's answer is not a usable plan."""


def parse_replan(text: str, *, truncated: bool = False, stop_reason: str = "max_tokens") -> Replanned:
    """The planner's new goal and approach; none from a ``truncated`` (unfinished) answer."""
    return parse_answer(text, Replanned, "the planner", ReplanError, truncated=truncated, stop_reason=stop_reason)
