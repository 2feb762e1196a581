"""Run one process with a hard wall-clock timeout and a cap on its output.

Output is read by one thread per stream (no deadlock whatever the child writes);
only the last ``tail_bytes`` of each stream are kept. When stdout+stderr together
exceed ``max_output_bytes`` the process group is killed with reason ``"output"``;
when ``timeout_s`` passes it is killed with reason ``"timeout"``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_CHUNK = 65536
# How long to wait for the output pipes to close once the process is gone
# (a stray grandchild of an unsandboxed run may hold them open).
_DRAIN_GRACE_S = 5.0
# How long a process killed through ``kill_hook`` may take to end before its group is killed.
_KILL_GRACE_S = 10.0


@dataclass
class ProcessOutcome:
    returncode: int | None
    killed: str | None  # "timeout" | "output" | None
    stdout: bytes
    stderr: bytes
    duration_s: float


class _Capture:
    """Shared state of the two reader threads."""

    def __init__(self, max_output_bytes: int, tail_bytes: int, kill: "_Killer") -> None:
        self._lock = threading.Lock()
        self._max = max_output_bytes
        self._tail = tail_bytes
        self._total = 0
        self._kill = kill
        self.buffers: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def pump(self, stream: IO[bytes], key: str) -> None:
        fd = stream.fileno()
        buf = self.buffers[key]
        try:
            while True:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    return
                overflow = False
                with self._lock:
                    room = self._max - self._total
                    self._total += len(chunk)
                    if room < len(chunk):
                        chunk = chunk[: max(room, 0)]
                        overflow = True
                    if chunk:
                        buf.extend(chunk)
                        if len(buf) > self._tail:
                            del buf[: len(buf) - self._tail]
                if overflow:
                    self._kill("output")  # keep draining so writers never block
        except OSError:
            return
        finally:
            stream.close()


class _Killer:
    """Kills once; remembers the first reason.

    ``hook`` may kill in a better way (bubblewrap: the sandbox's init, so that the
    whole pid namespace is gone before bwrap exits) and returns whether it did;
    otherwise the process group is killed.
    """

    def __init__(self, proc: subprocess.Popen[bytes], hook: Callable[[], bool] | None) -> None:
        self._proc = proc
        self._hook = hook
        self._lock = threading.Lock()
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        if self._hook is None or not self._hook():
            kill_group(self._proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its process group (it was started in a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def wait_for_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """``proc.wait(timeout_s)`` without its polling: ``Popen.wait`` with a timeout sleeps in steps
    that double up to 50 ms, so a 15 ms process was seen only after 30 ms or more. This blocks on a
    pidfd of the child instead and returns as soon as it exits. Raises ``TimeoutExpired`` as
    ``Popen.wait`` does. Where pidfds are missing (kernel before 5.3) it falls back to ``Popen.wait``."""
    if proc.poll() is not None:
        return
    # Not reaped yet (poll just checked), so the pid is still this child's: the pidfd is its.
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here, or the child was reaped already
        proc.wait(timeout=timeout_s)
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ready = poller.poll(max(0, int(timeout_s * 1000)))
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout_s)
    proc.wait()


def run_captured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    timeout_s: float,
    max_output_bytes: int,
    tail_bytes: int,
    pass_fds: Sequence[int] = (),
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    kill_hook: Callable[[], bool] | None = None,
) -> ProcessOutcome:
    """Run ``argv`` in a new session; see the module docstring for the limits.

    ``on_start`` is called right after the process started; ``kill_hook`` see ``_Killer``.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
    )
    killer = _Killer(proc, kill_hook)
    if on_start is not None:
        on_start(proc)
    capture = _Capture(max_output_bytes, tail_bytes, killer)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=capture.pump, args=(proc.stdout, "stdout"), daemon=True),
        threading.Thread(target=capture.pump, args=(proc.stderr, "stderr"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        wait_for_exit(proc, timeout_s)
    except subprocess.TimeoutExpired:
        killer("timeout")
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
    finally:
        if proc.returncode is None:  # interrupted: never leave the tree behind
            kill_group(proc)
            proc.wait()
    # Whatever the leader left behind in its group goes too.
    kill_group(proc)
    for reader in readers:
        reader.join(_DRAIN_GRACE_S)
    with capture._lock:
        stdout = bytes(capture.buffers["stdout"])
        stderr = bytes(capture.buffers["stderr"])
    return ProcessOutcome(
        returncode=proc.returncode,
        killed=killer.reason,
        stdout=stdout,
        stderr=stderr,
        duration_s=time.monotonic() - start,
    )
