"""Known-flaky tests of a project: what each attempt's gate saw, folded into one record per test. Pure.

The gate re-runs a newly failing test once; passing on the re-run makes it *flaky* in that attempt.
One flake says little; a test that flaked in ``quarantine_after_runs`` different runs of a project
is **quarantined**: later gates re-run it more (``quarantine_reruns``) before they call its failure a
regression. A quarantined test that fails every re-run still blocks: quarantine never hides a
failure that reproduces. Strict CI ignores quarantine (it blocks on any flaky test): the evidence
comes from candidates, so it cannot tell a test that flakes anyway from one a change made flaky.

A record is **cleared** when its test passed at the first try ``clear_after_passes`` times since its
last flake, or flaked no more for ``clear_after_days``; a cleared record is forgotten
``forget_after_days`` later. Records change only here; ``engine/flakiness.py`` loads and stores them.

An operator may also quarantine or clear a test **by hand** (:func:`set_by_hand`); the reason then
says so. The normal rules still apply afterwards: a test quarantined by hand is cleared by enough
first-try passes or days without a flake (both counted from the hand quarantine), and a test cleared
by hand that flakes again is a suspect, like any cleared one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autopack.errors import InvalidRequest, NotFound

SUSPECTED = "suspected"
QUARANTINED = "quarantined"
CLEARED = "cleared"
STATES = (SUSPECTED, QUARANTINED, CLEARED)
HAND_STATES = (QUARANTINED, CLEARED)  # the states an operator may set by hand (a suspect comes only from a flake)
BY_HAND = "by hand"  # how a reason set by hand begins
REASON_MAX = 500  # characters of an operator's reason
PASSED = "passed"
RUNS_KEPT = 20  # the run ids of a record's flakes kept as evidence (at least quarantine_after_runs)


class FlakinessConfig(BaseModel):
    """``flakiness:`` in ``config/strategy.yaml``."""

    model_config = ConfigDict(extra="forbid")

    quarantine_after_runs: int = Field(2, ge=1, le=RUNS_KEPT)  # distinct runs a test flaked in
    quarantine_reruns: int = Field(2, ge=0, le=5)  # re-runs a quarantined test gets after the first
    clear_after_passes: int = Field(20, ge=1)  # first-try passes since the last flake
    clear_after_days: int = Field(30, gt=0)  # days without a flake
    forget_after_days: int = Field(30, gt=0)  # days a cleared record is kept


@dataclass(frozen=True)
class FlakyRecord:
    test_id: str
    state: str = SUSPECTED
    flaky_count: int = 0
    runs: tuple[str, ...] = ()  # runs it flaked in since it was last cleared, oldest first
    passes_since_flaky: int = 0
    first_seen_at: datetime | None = None
    last_flaky_at: datetime | None = None
    state_changed_at: datetime | None = None
    state_reason: str = ""


@dataclass(frozen=True)
class AttemptTests:
    """What one attempt's gate saw: the tests that flaked, and those that passed at the first try."""

    flaky: frozenset[str]
    passed: frozenset[str]


@dataclass
class Fold:
    records: dict[str, FlakyRecord] = field(default_factory=dict)  # every record that changed
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # (test id, new state, reason)


def attempt_tests(test_result: Mapping[str, Any] | None, gate: Mapping[str, Any] | None) -> AttemptTests:
    """Read an attempt's stored ``test_result`` and ``gate`` (as the probe step writes them)."""
    outcomes = (test_result or {}).get("outcomes") or {}
    flaky = frozenset((gate or {}).get("flaky") or ())
    return AttemptTests(flaky=flaky, passed=frozenset(t for t, o in outcomes.items() if o == PASSED) - flaky)


def _set_state(rec: FlakyRecord, state: str, reason: str, now: datetime, fold: Fold) -> FlakyRecord:
    fold.changes.append((rec.test_id, state, reason))
    return replace(rec, state=state, state_reason=reason, state_changed_at=now)


def fold_run(records: Mapping[str, FlakyRecord], run_id: str, attempts: Sequence[AttemptTests], now: datetime,
             cfg: FlakinessConfig) -> Fold:
    """Fold one run's attempts (in the order they ran) into a project's ``records`` (by test id).

    Only flakes create records; a first-try pass counts only for a test already recorded."""
    fold = Fold()
    current = dict(records)
    for seen in attempts:
        for test_id in sorted(seen.flaky):
            rec = current.get(test_id) or FlakyRecord(test_id=test_id, first_seen_at=now, state_changed_at=now)
            runs = rec.runs if run_id in rec.runs else (*rec.runs, run_id)[-RUNS_KEPT:]
            rec = replace(rec, flaky_count=rec.flaky_count + 1, runs=runs, passes_since_flaky=0, last_flaky_at=now)
            if rec.state == CLEARED:
                rec = _set_state(rec, SUSPECTED, "flaky again after it was cleared", now, fold)
            if rec.state == SUSPECTED and len(rec.runs) >= cfg.quarantine_after_runs:
                rec = _set_state(rec, QUARANTINED, f"flaky in {len(rec.runs)} runs", now, fold)
            current[test_id] = fold.records[test_id] = rec
        for test_id in sorted(seen.passed & current.keys()):
            rec = current[test_id]
            if rec.state == CLEARED:
                continue
            rec = replace(rec, passes_since_flaky=rec.passes_since_flaky + 1)
            if rec.passes_since_flaky >= cfg.clear_after_passes:
                rec = _set_state(replace(rec, runs=()), CLEARED,
                                 f"passed at the first try {rec.passes_since_flaky} times since its last flake", now, fold)
            current[test_id] = fold.records[test_id] = rec
    return fold


def age(record: FlakyRecord, now: datetime, cfg: FlakinessConfig) -> FlakyRecord | None:
    """The record after time passed: cleared if it has not flaked (nor been quarantined by hand) for
    ``clear_after_days``; ``None`` (forget it) once it has been cleared for ``forget_after_days``;
    else unchanged."""
    if record.state == CLEARED:
        since = record.state_changed_at or record.last_flaky_at
        return None if since is not None and now - since >= timedelta(days=cfg.forget_after_days) else record
    # From the last flake, or from a later change of state: a quarantine by hand restarts the clock
    # (an automatic change of state to suspected or quarantined happens at a flake anyway).
    dates = [d for d in (record.last_flaky_at or record.first_seen_at, record.state_changed_at) if d is not None]
    last = max(dates) if dates else None
    if last is not None and now - last >= timedelta(days=cfg.clear_after_days):
        return replace(record, state=CLEARED, runs=(), state_changed_at=now,
                       state_reason=f"not flaky for {cfg.clear_after_days} days")
    return record


def set_by_hand(record: FlakyRecord | None, test_id: str, state: str, reason: str, now: datetime) -> FlakyRecord:
    """An operator's quarantine or clearing of ``test_id`` (its ``record``, or ``None`` if it has none).

    The reason is recorded as ``"by hand: <reason>"`` (or just ``"by hand"``). Clearing resets what
    automatic clearing resets (the runs it flaked in, so it needs ``quarantine_after_runs`` runs anew);
    there must be a record to clear. Quarantining a test without a record makes one (it never flaked:
    ``flaky_count`` 0, no runs, every date ``now``, as the table wants one) and restarts the clearing
    clocks: ``clear_after_passes`` first-try passes and ``clear_after_days`` days count from ``now``.
    After that the normal rules apply (:func:`fold_run`, :func:`age`)."""
    if state not in HAND_STATES:
        raise InvalidRequest("state", f"must be one of {', '.join(HAND_STATES)} (a test becomes a suspect only by flaking)")
    if not test_id.strip():
        raise InvalidRequest("test", "must be a test id, e.g. tests/test_a.py::test_x")
    if record is not None and record.test_id != test_id:
        raise ValueError(f"the record is of {record.test_id!r}, not of {test_id!r}")
    reason = " ".join(reason.split())
    if len(reason) > REASON_MAX:
        raise InvalidRequest("reason", f"must be at most {REASON_MAX} characters")
    why = f"{BY_HAND}: {reason}" if reason else BY_HAND
    if state == CLEARED:
        if record is None:
            raise NotFound(f"test {test_id!r} has no known-flaky record to clear")
        return replace(record, state=CLEARED, runs=(), state_reason=why, state_changed_at=now)
    if record is None:
        record = FlakyRecord(test_id=test_id, first_seen_at=now, last_flaky_at=now)
    return replace(record, state=QUARANTINED, passes_since_flaky=0, state_reason=why, state_changed_at=now)
