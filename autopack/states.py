"""State machines for runs, tiers, phases and attempts: pure data and one function.

An illegal transition raises ``IllegalTransition`` (the API answers 409).
"""

from __future__ import annotations

from enum import StrEnum

from autopack.errors import IllegalTransition


class RunState(StrEnum):
    QUEUED = "QUEUED"
    PLANNING = "PLANNING"
    RUNNING = "RUNNING"
    DONE_SUCCESS = "DONE_SUCCESS"
    DONE_FAILED_BUDGET_EXHAUSTED = "DONE_FAILED_BUDGET_EXHAUSTED"
    DONE_FAILED_TOKEN_CAP_EXCEEDED = "DONE_FAILED_TOKEN_CAP_EXCEEDED"
    DONE_FAILED_PHASE_LIMIT_EXCEEDED = "DONE_FAILED_PHASE_LIMIT_EXCEEDED"
    DONE_FAILED_TIER_BLOCKED = "DONE_FAILED_TIER_BLOCKED"
    DONE_FAILED_CI_FAILED = "DONE_FAILED_CI_FAILED"
    DONE_FAILED_HEALTH_BUDGET = "DONE_FAILED_HEALTH_BUDGET"
    DONE_FAILED_MANUAL_ABORT = "DONE_FAILED_MANUAL_ABORT"
    DONE_FAILED_SETUP = "DONE_FAILED_SETUP"
    DONE_FAILED_INFRASTRUCTURE = "DONE_FAILED_INFRASTRUCTURE"
    DONE_FAILED_TIMEOUT = "DONE_FAILED_TIMEOUT"
    DONE_FAILED_ROLLED_BACK = "DONE_FAILED_ROLLED_BACK"  # the Doctor undid the run: its branch is back at the base
    CANCELLED = "CANCELLED"


class TierState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    BLOCKED = "BLOCKED"
    NOT_CLEAN = "NOT_CLEAN"


class PhaseState(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    GATE = "GATE"
    RETRY = "RETRY"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


R, T, P = RunState, TierState, PhaseState

RUN_TERMINAL: frozenset[RunState] = frozenset(s for s in RunState if s.startswith("DONE_") or s == R.CANCELLED)
TIER_TERMINAL: frozenset[TierState] = frozenset({T.COMPLETE, T.BLOCKED, T.NOT_CLEAN})
PHASE_TERMINAL: frozenset[PhaseState] = frozenset({P.COMPLETE, P.FAILED, P.SKIPPED})

_FAILED = frozenset(s for s in RunState if s.startswith("DONE_FAILED_"))

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # A queued run can also time out (no build worker took its start_run before max_runtime_s) or
    # fail for infrastructure (its start_run kept killing its worker, or failed for good).
    R.QUEUED: frozenset({R.PLANNING, R.CANCELLED, R.DONE_FAILED_SETUP, R.DONE_FAILED_MANUAL_ABORT,
                         R.DONE_FAILED_TIMEOUT, R.DONE_FAILED_INFRASTRUCTURE}),
    R.PLANNING: frozenset({R.RUNNING, R.CANCELLED} | _FAILED),
    R.RUNNING: frozenset({R.DONE_SUCCESS, R.CANCELLED} | _FAILED),
    **{s: frozenset() for s in RUN_TERMINAL},
}

TIER_TRANSITIONS: dict[TierState, frozenset[TierState]] = {
    T.PENDING: frozenset({T.RUNNING, T.BLOCKED}),
    T.RUNNING: frozenset({T.COMPLETE, T.BLOCKED, T.NOT_CLEAN}),
    T.COMPLETE: frozenset(),
    T.BLOCKED: frozenset(),
    T.NOT_CLEAN: frozenset(),
}

PHASE_TRANSITIONS: dict[PhaseState, frozenset[PhaseState]] = {
    P.QUEUED: frozenset({P.EXECUTING, P.SKIPPED, P.FAILED}),
    P.EXECUTING: frozenset({P.GATE, P.RETRY, P.FAILED, P.SKIPPED}),
    P.GATE: frozenset({P.COMPLETE, P.RETRY, P.FAILED, P.SKIPPED}),
    P.RETRY: frozenset({P.EXECUTING, P.FAILED, P.SKIPPED}),
    P.COMPLETE: frozenset(),
    P.FAILED: frozenset(),
    P.SKIPPED: frozenset(),
}

_TABLES = {"run": (RunState, RUN_TRANSITIONS), "tier": (TierState, TIER_TRANSITIONS), "phase": (PhaseState, PHASE_TRANSITIONS)}


def can_transition(entity: str, current: str, target: str) -> bool:
    enum, table = _TABLES[entity]
    try:
        return enum(target) in table[enum(current)]
    except ValueError:
        return False


def check_transition(entity: str, current: str, target: str) -> str:
    """Return ``target`` if ``current -> target`` is legal for ``entity``, else raise ``IllegalTransition``."""
    if entity not in _TABLES:
        raise ValueError(f"unknown entity {entity!r}")
    if not can_transition(entity, current, target):
        raise IllegalTransition(entity, current, target)
    return target


def is_terminal_run(state: str) -> bool:
    return state in RUN_TERMINAL
