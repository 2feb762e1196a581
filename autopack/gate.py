"""The test gate: a pure decision on test outcomes.

Outcomes are ``{test id: "passed" | "failed" | "error" | "skipped"}`` maps (see
``autopack.sandbox.junit``). ``baseline`` is the run at T0 (the integration branch
before the phase), ``candidate`` the run on the phase's candidate commit, ``rerun``
the outcomes of re-running ``tests_to_rerun(baseline, candidate)`` once.

A change passes when the run was not killed, no test that passed at T0 now fails,
errors, is skipped or is gone (failures that already existed do not block), every
acceptance entry matches at least one test and all its tests pass, and no
deliverable is missing. A test that failed but passed on its re-run is *flaky*: it
is reported and does not block. A *quarantined* test (known flaky in the project, see
``autopack.flakiness``) may be re-run more (``extra_reruns``): passing on any of them
makes it flaky too, reported apart as ``known_flaky``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PASSED = "passed"
FAILING = ("failed", "error")


@dataclass(frozen=True)
class GateInput:
    baseline: dict[str, str]
    candidate: dict[str, str]
    rerun: dict[str, str] | None
    acceptance: tuple[str, ...]
    missing_deliverables: tuple[str, ...]
    killed: str | None
    quarantined: frozenset[str] = frozenset()
    extra_reruns: tuple[dict[str, str], ...] = ()  # later re-runs, which count for quarantined tests only


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    regressions: tuple[str, ...]
    flaky: tuple[str, ...]
    known_flaky: tuple[str, ...]  # the flaky tests that were quarantined
    acceptance_failed: tuple[str, ...]  # test ids matched by an acceptance entry that did not pass
    acceptance_missing: tuple[str, ...]  # acceptance entries that matched no test
    missing_deliverables: tuple[str, ...]
    reason: str


def newly_failing(baseline: Mapping[str, str], candidate: Mapping[str, str]) -> list[str]:
    """Tests that passed at T0 and now fail, error, are skipped or are gone.

    A vanished or newly skipped test counts: removing or skipping a passing test is
    how a change can hide a regression, so it is treated as one.
    """
    return sorted(t for t, outcome in baseline.items() if outcome == PASSED and candidate.get(t) != PASSED)


def tests_to_rerun(baseline: Mapping[str, str], candidate: Mapping[str, str]) -> list[str]:
    """The newly failing tests worth one re-run: those that ran and failed or errored.

    Vanished and skipped tests are not re-run; the outcome would be the same.
    """
    return [t for t in newly_failing(baseline, candidate) if candidate.get(t) in FAILING]


def quarantined_to_rerun(quarantined: Iterable[str], rerun_ids: Iterable[str], reruns: Iterable[Mapping[str, str]]) -> list[str]:
    """The quarantined tests among ``rerun_ids`` that passed in none of ``reruns`` so far: the ones
    worth another re-run (up to the project's ``quarantine_reruns``)."""
    q, runs = set(quarantined), list(reruns)
    return [t for t in rerun_ids if t in q and not any(r.get(t) == PASSED for r in runs)]


# Its name starts with "test": keep pytest from collecting it where it is imported.
tests_to_rerun.__test__ = False  # type: ignore[attr-defined]


def acceptance_matches(entry: str, test_id: str) -> bool:
    """Whether ``test_id`` is selected by an acceptance entry.

    An entry is a node id (``tests/t.py::test_a`` also matches its parametrized
    cases ``tests/t.py::test_a[1]``), a class (``tests/t.py::TestA``), a file
    (``tests/t.py``) or a directory (``tests/unit``).
    """
    e = entry.strip()
    if e.startswith("./"):
        e = e[2:]
    if "::" not in e:
        e = e.rstrip("/")
    if not e:
        return False
    if test_id == e or test_id.startswith(e + "::") or test_id.startswith(e + "["):
        return True
    return "::" not in e and test_id.startswith(e + "/")


def _names(ids: Iterable[str], limit: int = 3) -> str:
    items = list(ids)
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def evaluate(inp: GateInput) -> GateVerdict:
    """Decide whether the candidate passes the gate; ``reason`` is one line."""
    newly = newly_failing(inp.baseline, inp.candidate)
    rerunnable = set(tests_to_rerun(inp.baseline, inp.candidate))
    rerun = inp.rerun or {}
    flaky = tuple(t for t in newly if t in rerunnable and (rerun.get(t) == PASSED or (
        t in inp.quarantined and any(r.get(t) == PASSED for r in inp.extra_reruns))))
    known_flaky = tuple(t for t in flaky if t in inp.quarantined)
    regressions = tuple(t for t in newly if t not in flaky)

    effective = dict(inp.candidate)
    effective.update({t: PASSED for t in flaky})
    failed: list[str] = []
    missing: list[str] = []
    for entry in inp.acceptance:
        matched = sorted(t for t in effective if acceptance_matches(entry, t))
        if not matched:
            missing.append(entry)
        failed.extend(t for t in matched if effective[t] != PASSED and t not in failed)

    passed = not (inp.killed or regressions or failed or missing or inp.missing_deliverables)
    if passed:
        total = len(effective)
        ok = sum(1 for o in effective.values() if o == PASSED)
        old = sum(1 for t, o in effective.items() if o in FAILING and inp.baseline.get(t) != PASSED)
        reason = f"passed: {ok}/{total} tests passed, no regressions"
        if flaky:
            reason += f", {len(flaky)} flaky (passed on re-run: {_names(flaky)})"
            if known_flaky:
                reason += f", {len(known_flaky)} of them quarantined"
        if old:
            reason += f", {old} failing test(s) not passing at baseline"
    else:
        parts = []
        if inp.killed:
            parts.append(f"test run killed ({inp.killed})")
        if regressions:
            parts.append(f"{len(regressions)} regression(s): {_names(regressions)}")
        if failed:
            parts.append(f"acceptance tests not passing: {_names(failed)}")
        if missing:
            parts.append(f"acceptance entries matching no test: {_names(missing)}")
        if inp.missing_deliverables:
            parts.append(f"missing deliverables: {_names(inp.missing_deliverables)}")
        reason = "failed: " + "; ".join(parts)
    return GateVerdict(
        passed=passed,
        regressions=regressions,
        flaky=flaky,
        known_flaky=known_flaky,
        acceptance_failed=tuple(failed),
        acceptance_missing=tuple(missing),
        missing_deliverables=tuple(inp.missing_deliverables),
        reason=" ".join(reason.split()),
    )
