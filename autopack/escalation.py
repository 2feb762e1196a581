"""Escalation: after failures of a phase its attempts move up the complexity levels (and so to the
stronger model configured for that level), and within a level along the level's escalation chain
after repeated failures of one kind; a new phase starts at its own level again. Pure."""

from __future__ import annotations

from collections.abc import Sequence

LEVELS = ("low", "medium", "high")


def effective_complexity(base: str, burned_failures: int, per_level: int) -> str:
    """``base`` moved up one level for every ``per_level`` failures, capped at ``high``."""
    if per_level <= 0:
        return base
    index = min(len(LEVELS) - 1, LEVELS.index(base) + burned_failures // per_level)
    return LEVELS[index]


def trailing_same_kind(kinds: Sequence[str]) -> int:
    """How many of the last ``kinds`` (oldest first) are the same as the last one."""
    n = 0
    for kind in reversed(kinds):
        if kind != kinds[-1]:
            break
        n += 1
    return n


def model_from_chain(chain: Sequence[str], same_kind_failures: int, per_model: int) -> str:
    """The chain's model after ``same_kind_failures`` consecutive failures of one kind: one step
    along the chain for every ``per_model`` of them, capped at its last model."""
    if not chain:
        raise ValueError("an escalation chain needs at least one model")
    if per_model <= 0:
        return chain[0]
    return chain[min(len(chain) - 1, same_kind_failures // per_model)]
