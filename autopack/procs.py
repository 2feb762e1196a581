"""Child processes for ``autopack up`` and ``autopack demo``: start together, stop together."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Worker groups of the local profile (and of the Procfile and docker-compose.yml): (name, queues,
# pool, concurrency). Every pool is prefork: Celery's thread pool applies neither the queues' time
# limits nor worker recycling, so a hung Builder or Auditor step would hold its thread for good.
WORKER_GROUPS: tuple[tuple[str, str, str, int], ...] = (
    ("build", "build,audit", "prefork", 4),
    ("ci", "ci", "prefork", 2),
    ("events", "events,agents,maintenance", "prefork", 2),
)


def _ephemeral_low(default: int = 32768) -> int:
    """The lowest port the kernel hands out as the local port of outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port() -> int:
    """A loopback port free now, chosen below the kernel's ephemeral range when there is room:
    a server restarted on it (a test's private Redis or PostgreSQL) cannot then find it taken as
    the local port of some outgoing connection made while it was down."""
    low = _ephemeral_low()
    if low > 11_000:
        for _ in range(50):
            port = random.randrange(10_000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_argv(name: str, queues: str, pool: str, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "tasks", "worker",
        "-Q", queues, "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h",
        "-E", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
    ]


@dataclass
class ProcessGroup:
    log_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, quiet: bool = True) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab") if quiet else None  # noqa: SIM115 - lives with the child
        proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT if quiet else None, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def failed(self) -> list[str]:
        return [f"{n} exited with {p.returncode}" for n, p in self.procs if p.poll() is not None]

    def stop(self, timeout: float = 15.0) -> None:
        # SIGTERM to each leader only: a Celery worker then shuts its own pool down warmly
        # (signalling the whole group would kill pool children under it and stall the shutdown).
        for _, p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            try:  # anything the child left behind in its session
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()


def wait_http(url: str, timeout: float = 30.0, group: ProcessGroup | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if group is not None and group.failed():
            raise RuntimeError("; ".join(group.failed()))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL we built
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s ({last})")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C so the children are stopped too."""


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP raise in the main thread like Ctrl-C does, so ``finally`` blocks
    stop the child processes instead of leaving them orphaned."""

    def _raise(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
    # Python leaves SIGINT ignored when it was ignored at start (a background job of a shell, for
    # instance): Ctrl-C must still stop everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
