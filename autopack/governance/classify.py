"""Failure classification: what kind of failure a finished attempt had, from the plain facts the
engine records on it. Pure.

Precedence (first match wins): the engine's own ``failure_class`` for build-stage failures (budget,
provider error, infrastructure, refused or non-applying edits), then the sandbox (an error starting
the tests, a kill), then the gate (regressions before other test failures), then the audit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FailureClass(StrEnum):
    EDIT_NOT_APPLIED = "edit_not_applied"  # malformed, non-matching or truncated edits
    SCOPE_VIOLATION = "scope_violation"  # governance refused an edit (scope, protected path)
    TEST_FAILURE = "test_failure"
    REGRESSION = "regression"  # a test that passed at T0 fails now
    AUDITOR_REJECTION = "auditor_rejection"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"  # the test run hit its wall-clock limit
    SANDBOX_RESOURCE_LIMIT = "sandbox_resource_limit"  # output, CPU, file size or memory limit
    INFRASTRUCTURE = "infrastructure"  # not the change's fault: sandbox, git, a lost worker
    BUDGET = "budget"


class NotAFailure(ValueError):
    """The facts describe an attempt that did not fail."""


class UnknownFailureClass(ValueError):
    """The engine recorded a failure class this module does not know; add it to ``ENGINE_CLASSES``."""


# The engine's recorded ``Attempt.failure_class`` strings (and this module's own values) → class.
# "edit_refused" is special-cased: see ``classify_failure``.
ENGINE_CLASSES: Mapping[str, FailureClass] = {
    **{c.value: c for c in FailureClass},
    "edit_invalid": FailureClass.EDIT_NOT_APPLIED,
    "truncated": FailureClass.EDIT_NOT_APPLIED,
    "edit_refused": FailureClass.SCOPE_VIOLATION,
    "worker_lost": FailureClass.INFRASTRUCTURE,
    "sandbox_unavailable": FailureClass.INFRASTRUCTURE,
    "git_error": FailureClass.INFRASTRUCTURE,
}

# Classes whose recorded value is decided by the gate and audit facts rather than taken as is.
_GATE_STAGE = frozenset({"test_failure", "regression", "auditor_rejection", "timeout", "sandbox_resource_limit"})

# ``killed`` values of the sandbox that mean a resource limit: output cap, the run's memory cap (its
# cgroup's), RLIMIT_CPU (SIGXCPU, then SIGKILL at the hard limit), RLIMIT_FSIZE (SIGXFSZ). Signals sent
# from outside mean infrastructure; any other signal (SIGSEGV, SIGABRT…) is the code under test
# crashing: a test failure.
RESOURCE_KILLS = frozenset({"output", "memory", "signal:SIGXCPU", "signal:SIGXFSZ", "signal:SIGKILL"})
EXTERNAL_KILLS = frozenset({"signal:SIGTERM", "signal:SIGHUP", "signal:SIGINT", "signal:SIGQUIT"})

# Prefix of the engine's message when committing the candidate failed after the edits were accepted.
_APPLY_FAILED = "apply failed"


@dataclass(frozen=True)
class AttemptFacts:
    """What the engine knows about a finished attempt, as plain data.

    ``gate`` is the attempt's gate record (or the raw test result): ``passed``, ``killed``
    ("timeout" | "output" | "memory" | "signal:<NAME>" | None), ``regressions`` and ``error`` are read.
    ``audit_required`` False (advisory/off audits) means a rejection does not fail the attempt.
    """

    failure_class: str | None = None
    gate: Mapping[str, Any] = field(default_factory=dict)
    audit_approved: bool | None = None
    audit_required: bool = True
    error: str = ""


def _from_kill(killed: str) -> FailureClass:
    if killed == "timeout":
        return FailureClass.TIMEOUT
    if killed in RESOURCE_KILLS:
        return FailureClass.SANDBOX_RESOURCE_LIMIT
    if killed in EXTERNAL_KILLS:
        return FailureClass.INFRASTRUCTURE
    return FailureClass.TEST_FAILURE


def classify_failure(facts: AttemptFacts) -> FailureClass:
    """The class of a failed attempt. Raises ``NotAFailure`` when nothing failed and
    ``UnknownFailureClass`` for a recorded class this module does not know."""
    recorded = facts.failure_class
    if recorded and recorded not in _GATE_STAGE:
        cls = ENGINE_CLASSES.get(recorded)
        if cls is None:
            raise UnknownFailureClass(f"unknown failure class {recorded!r}")
        if recorded == "edit_refused" and facts.error.lower().startswith(_APPLY_FAILED):
            return FailureClass.EDIT_NOT_APPLIED
        return cls
    gate = facts.gate
    killed = gate.get("killed")
    if killed:
        return _from_kill(str(killed))
    # A candidate's run that left no readable JUnit report (``error``) counts as a failed test run:
    # the baseline wrote one, so the candidate most likely broke the test command (a conftest that
    # no longer imports, a deleted pytest setting). As infrastructure it used no attempt, and such a
    # candidate was built again and again, to the health budget's 20 failures.
    if gate.get("regressions") or recorded == "regression":
        return FailureClass.REGRESSION
    if gate.get("passed") is False or recorded == "test_failure":
        return FailureClass.TEST_FAILURE
    if facts.audit_approved is False and facts.audit_required:
        return FailureClass.AUDITOR_REJECTION
    if recorded in _GATE_STAGE:
        return FailureClass(recorded)
    if facts.audit_required and facts.audit_approved is None and gate.get("passed") is True:
        return FailureClass.AUDITOR_REJECTION  # a required audit that gave no approval
    raise NotAFailure("the attempt built, passed the gate and was not rejected by a required audit")


NOT_BURNING = frozenset({FailureClass.PROVIDER_ERROR, FailureClass.INFRASTRUCTURE})


def burns_attempt(cls: FailureClass) -> bool:
    """Whether a failure of this class uses up one of the phase's attempts. Provider and
    infrastructure failures never do (the health budget bounds them instead)."""
    return cls not in NOT_BURNING
