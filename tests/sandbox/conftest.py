"""Shared fixtures of the sandbox tests.

Tests that need bubblewrap use the ``sandbox`` fixture: it skips with the reason
``check_bwrap`` gives when the sandbox cannot start, and fails instead when
``AUTOPACK_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from autopack.errors import SandboxUnavailable
from autopack.sandbox.runner import BwrapSandbox, SandboxResult, check_bwrap


@functools.cache
def _bwrap_problem() -> str | None:
    try:
        check_bwrap()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def sandbox() -> BwrapSandbox:
    problem = _bwrap_problem()
    if problem is not None:
        if os.environ.get("AUTOPACK_REQUIRE_SERVICES") == "1":
            pytest.fail(f"bubblewrap sandbox required (AUTOPACK_REQUIRE_SERVICES=1) but unavailable: {problem}")
        pytest.skip(f"bubblewrap sandbox unavailable: {problem}")
    return BwrapSandbox()


@pytest.fixture(scope="session")
def owned_sandbox(sandbox: BwrapSandbox) -> BwrapSandbox:
    """A sandbox with a fixed uid of its own (when root), so the test can look for its
    processes on the host without seeing other runs'. ``uid`` is None when not root."""
    if os.geteuid() != 0:
        return sandbox
    return BwrapSandbox(uid=2_100_000_000 + os.getpid() % 1_000_000)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


class Probes:
    """Helpers for tests that run small Python scripts (probes) in a workspace."""

    @staticmethod
    def write(workdir: Path, source: str, name: str = "probe.py") -> list[str]:
        """Put a Python script in the workspace; return the argv that runs it there."""
        (workdir / name).write_text(source)
        return [sys.executable, name]

    @staticmethod
    def report(result: SandboxResult) -> dict[str, Any]:
        """The JSON object a probe printed as its last stdout line."""
        assert result.exit_code == 0, (result.exit_code, result.killed, result.stderr)
        return json.loads(result.stdout.strip().splitlines()[-1])

    @staticmethod
    def pids_of_uid(uid: int) -> set[int]:
        return pids_of_uid(uid)


@pytest.fixture
def probes() -> type[Probes]:
    return Probes


def pids_of_uid(uid: int) -> set[int]:
    """Host processes (zombies included) whose real uid is ``uid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid:
            out.add(int(entry))
    return out
