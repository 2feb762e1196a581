"""Escalation: after failures of a phase its attempts move up the complexity levels (and so to the
stronger model configured for that level); a new phase starts at its own level again. Pure."""

from __future__ import annotations

LEVELS = ("low", "medium", "high")


def effective_complexity(base: str, burned_failures: int, per_level: int) -> str:
    """``base`` moved up one level for every ``per_level`` failures, capped at ``high``."""
    if per_level <= 0:
        return base
    index = min(len(LEVELS) - 1, LEVELS.index(base) + burned_failures // per_level)
    return LEVELS[index]
