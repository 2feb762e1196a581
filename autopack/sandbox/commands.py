"""Build test commands and run them in a sandbox."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

from autopack.sandbox.junit import TestRun, parse_junit
from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import Sandbox

JUNIT_DIR = ".autopack"


def pytest_argv(python: str, junit_path: str, selection: Sequence[str] | None = None) -> list[str]:
    """``python -m pytest`` writing a JUnit report; ``selection`` are node ids or paths."""
    return [
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--junitxml",
        junit_path,
        *(selection or []),
    ]


def run_pytest(
    sandbox: Sandbox,
    workdir: Path,
    python: str,
    limits: SandboxLimits,
    selection: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> TestRun:
    """Run pytest on a throw-away copy of ``workdir`` and parse its JUnit report.

    The report goes to a fresh random path so a stale file in the checkout is never
    mistaken for this run's. No report (collection crash, killed run) gives empty
    outcomes; a malformed one raises ``JUnitError``.
    """
    junit = f"{JUNIT_DIR}/junit-{secrets.token_hex(8)}.xml"
    result = sandbox.run(workdir, pytest_argv(python, junit, selection), limits, env=env, collect=[junit])
    xml = result.files.get(junit)
    outcomes = parse_junit(xml) if xml is not None else {}
    tail = (result.stdout + ("\n" if result.stdout and result.stderr else "") + result.stderr)[-20_000:]
    return TestRun(
        outcomes=outcomes,
        exit_code=result.exit_code,
        killed=result.killed,
        duration_s=result.duration_s,
        output_tail=tail,
    )
