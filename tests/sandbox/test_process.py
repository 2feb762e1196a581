"""wait_for_exit: Popen.wait(timeout) without its sleep-and-poll loop."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autopack.sandbox import _process
from autopack.sandbox._process import wait_for_exit


def _start(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL)


def test_returns_with_the_exit_status() -> None:
    proc = _start("raise SystemExit(3)")
    wait_for_exit(proc, 30)
    assert proc.returncode == 3


def test_raises_timeout_expired_and_leaves_the_process_running() -> None:
    proc = _start("import time; time.sleep(30)")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_for_exit(proc, 0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_child_already_reaped_returns_at_once() -> None:
    proc = _start("pass")
    proc.wait()
    wait_for_exit(proc, 0.0)  # would raise TimeoutExpired if it waited on anything
    assert proc.returncode == 0


def test_blocks_on_the_pidfd_not_on_popen_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit is seen through the pidfd: Popen.wait is only called without a timeout, to reap."""
    timeouts: list[float | None] = []
    real_wait = subprocess.Popen.wait

    def spy(self: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        timeouts.append(timeout)
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", spy)
    proc = _start("import time; time.sleep(0.1)")
    wait_for_exit(proc, 30)
    assert proc.returncode == 0
    assert timeouts == [None]


def test_falls_back_to_popen_wait_without_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(_process.os, "pidfd_open", no_pidfd)
    proc = _start("import time; time.sleep(0.1)")
    wait_for_exit(proc, 30)
    assert proc.returncode == 0
    slow = _start("import time; time.sleep(30)")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_for_exit(slow, 0.2)
    finally:
        slow.kill()
        slow.wait()
