"""The attempt decision, exhaustively over its plain inputs."""

from __future__ import annotations

import itertools

import pytest

from autopack.decide import AttemptOutcome, decide

GRID = list(itertools.product([True, False], [True, False, None], ["required", "advisory", "off"], [True, False, None], [1, 2, 3]))


@pytest.mark.parametrize(("built", "gate", "mode", "approved", "used"), GRID)
def test_decision(built: bool, gate: bool | None, mode: str, approved: bool | None, used: int) -> None:
    o = AttemptOutcome(built=built, build_failure=None if built else "no edits", failure_class=None if built else "edit_invalid",
                       gate_passed=gate if built else None, gate_reason="tests failed", audit_mode=mode,
                       audit_approved=approved, audit_summary="looks wrong", attempts_used=used, max_attempts=3)
    d = decide(o)
    completes = built and gate is True and (mode != "required" or approved is True)
    if completes:
        assert d.action == "complete" and d.feedback == ""
        assert ("advisory audit objected" in d.reason) == (mode == "advisory" and approved is False)
        return
    assert d.action == ("fail" if used == 3 else "retry")
    cause = "edit_invalid" if not built else "test gate" if gate is not True else "auditor rejected"
    assert cause in d.reason and cause in d.feedback
