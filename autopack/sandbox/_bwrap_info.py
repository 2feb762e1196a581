"""Follow a running bubblewrap through its ``--info-fd``.

bwrap writes ``{"child-pid": N, ...}`` once the sandbox is set up; N is the host
pid of the sandbox's init (pid 1 of its pid namespace). Holding a pidfd on it lets
us kill exactly that process (no pid-reuse race) — which tears the whole pid
namespace down, and bwrap exits only after that — and wait until it is gone.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
from pathlib import Path


def _ppid(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


class BwrapInfo:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._data = b""
        self._lock = threading.Lock()
        self._pidfd: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """Whether bwrap reported a running sandbox."""
        return b"child-pid" in self._data

    def on_start(self, proc: subprocess.Popen[bytes]) -> None:
        """Close our copy of the write end and start following ``proc``'s reports."""
        os.close(self.write_fd)
        self.write_fd = -1
        self._thread = threading.Thread(target=self._follow, args=(proc.pid,), daemon=True)
        self._thread.start()

    def _follow(self, launcher_pid: int) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._data += chunk
            if self._pidfd is None:
                self._open_pidfd(launcher_pid)

    def _open_pidfd(self, launcher_pid: int) -> None:
        try:
            info = json.loads(self._data.decode())
            pid = int(info["child-pid"])
        except (ValueError, KeyError, TypeError):
            return  # not complete yet
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone
        # Make sure the pidfd names a descendant of the process we started (bwrap's
        # child, or its grandchild through the launcher), not a process that reused the pid.
        parent = _ppid(pid)
        if (parent != launcher_pid and _ppid(parent) != launcher_pid) or self._exited(pidfd, 0):
            os.close(pidfd)
            return
        with self._lock:
            self._pidfd = pidfd

    @staticmethod
    def _exited(pidfd: int, timeout_s: float) -> bool:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)

    def kill(self) -> bool:
        """SIGKILL the sandbox's init; False when it is not known (kill bwrap instead)."""
        with self._lock:
            if self._pidfd is None:
                return False
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return True

    def finish(self, timeout_s: float) -> None:
        """After bwrap exited: wait (bounded) until the sandbox's init is gone; release fds."""
        if self.write_fd != -1:
            os.close(self.write_fd)
            self.write_fd = -1
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            if not self._exited(pidfd, 0):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                self._exited(pidfd, timeout_s)
            os.close(pidfd)
        os.close(self.read_fd)
