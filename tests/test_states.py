"""Every legal and every illegal transition of the run, tier and phase state machines."""

from __future__ import annotations

import itertools

import pytest

from autopack.errors import IllegalTransition
from autopack.states import PhaseState, RunState, TierState, can_transition, check_transition, is_terminal_run

R, T, P = RunState, TierState, PhaseState
FAILED = {s for s in RunState if s.value.startswith("DONE_FAILED_")}

# Written from DESIGN.md independently of the module's tables.
EXPECTED = {
    "run": (RunState, {
        R.QUEUED: {R.PLANNING, R.CANCELLED, R.DONE_FAILED_SETUP, R.DONE_FAILED_MANUAL_ABORT, R.DONE_FAILED_TIMEOUT,
                   R.DONE_FAILED_INFRASTRUCTURE},
        R.PLANNING: {R.RUNNING, R.CANCELLED} | FAILED,
        R.RUNNING: {R.DONE_SUCCESS, R.CANCELLED} | FAILED,
    }),
    "tier": (TierState, {
        T.PENDING: {T.RUNNING, T.BLOCKED},
        T.RUNNING: {T.COMPLETE, T.BLOCKED, T.NOT_CLEAN},
    }),
    "phase": (PhaseState, {
        P.QUEUED: {P.EXECUTING, P.SKIPPED, P.FAILED},
        P.EXECUTING: {P.GATE, P.RETRY, P.FAILED, P.SKIPPED},
        P.GATE: {P.COMPLETE, P.RETRY, P.FAILED, P.SKIPPED},
        P.RETRY: {P.EXECUTING, P.FAILED, P.SKIPPED},
    }),
}

CASES = [
    (entity, cur, tgt)
    for entity, (enum, _) in EXPECTED.items()
    for cur, tgt in itertools.product(list(enum), list(enum))
]


@pytest.mark.parametrize(("entity", "current", "target"), CASES, ids=[f"{e}:{c.value}->{t.value}" for e, c, t in CASES])
def test_transition(entity: str, current, target) -> None:  # type: ignore[no-untyped-def]
    legal = target in EXPECTED[entity][1].get(current, set())
    assert can_transition(entity, current, target) is legal
    if legal:
        assert check_transition(entity, current, target) == target
    else:
        with pytest.raises(IllegalTransition) as err:
            check_transition(entity, current, target)
        assert (err.value.entity, err.value.current, err.value.target) == (entity, current, target)


def test_the_design_failure_reasons_exist() -> None:
    for reason in ("BUDGET_EXHAUSTED", "TOKEN_CAP_EXCEEDED", "PHASE_LIMIT_EXCEEDED", "TIER_BLOCKED", "CI_FAILED", "HEALTH_BUDGET", "MANUAL_ABORT"):
        assert RunState(f"DONE_FAILED_{reason}") in FAILED


def test_terminal_run_states_have_no_exit() -> None:
    for state in RunState:
        terminal = state == R.CANCELLED or state.value.startswith("DONE_")
        assert is_terminal_run(state) is terminal
        if terminal:
            assert not any(can_transition("run", state, t) for t in RunState)


@pytest.mark.parametrize(("entity", "current", "target"), [("run", "QUEUED", "BOGUS"), ("run", "BOGUS", "QUEUED"), ("phase", "QUEUED", "PENDING")])
def test_unknown_states_are_illegal(entity: str, current: str, target: str) -> None:
    assert not can_transition(entity, current, target)
    with pytest.raises(IllegalTransition):
        check_transition(entity, current, target)


def test_unknown_entity() -> None:
    with pytest.raises(ValueError):
        check_transition("project", "A", "B")
