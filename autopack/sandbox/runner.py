"""Run untrusted commands on a throw-away copy of a workspace.

``BwrapSandbox`` is the real sandbox (bubblewrap: every namespace unshared, so no
network but a private loopback; a read-only view of the system and of the Python
installation(s) in use; nothing else of the host; rlimits; a hard timeout).
``UnsandboxedRunner`` has the same interface and the same limits but gives **no
isolation at all**: the code runs as the orchestrator's user with the host's
network and file system. Use it only when the operator explicitly opts out.

Where the host lets the worker make cgroups (``sandbox/cgroups.py``), each
bubblewrap run also gets a group of its own that caps the memory and the
processes of the whole run, which the per-process rlimits do not.

Both copy ``workdir`` into a fresh temp folder, run there, read back the
``collect`` files (paths relative to the workspace) and delete the copy, so a
caller can pass a live checkout: the original is never written. A caller that
hands over a throw-away folder (``consume=True``: the engine's fresh export of a
commit) has it moved instead of copied, and it is gone afterwards: the tree's
files are written once, not twice.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autopack.errors import SandboxUnavailable
from autopack.sandbox import _launch
from autopack.sandbox._bwrap_info import BwrapInfo
from autopack.sandbox._process import ProcessOutcome, run_captured
from autopack.sandbox.cgroups import RunCgroup, detect
from autopack.sandbox._workspace import (
    check_collect_paths,
    clear_collected,
    copy_workspace,
    make_run_dir,
    make_stage_dirs,
    read_back,
    remove_run_dir,
    take_workspace,
)
from autopack.sandbox.limits import SandboxLimits

# When the orchestrator is root and no uid is given, each run gets its own unused
# uid from this range (gid = uid), so concurrent sandboxes neither share the
# RLIMIT_NPROC budget nor own each other's files.
RUN_UID_RANGE = range(2_000_000_000, 2_100_000_000)
WORKSPACE = "/workspace"
TAIL_BYTES = 64 * 1024
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
SYSTEM_PATHS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc")
INSTALL_HINT = "bubblewrap is not installed; run: sudo apt-get install -y bubblewrap"
_MIB = 1024 * 1024
# Bound on waiting for a killed sandbox's pid namespace to be gone.
_GONE_TIMEOUT_S = 10.0


@dataclass
class SandboxResult:
    exit_code: int | None  # None when the command was killed (see ``killed``)
    timed_out: bool
    killed: str | None  # "timeout" | "output" | "memory" | "signal:<NAME>" | None
    stdout: str  # tail, capped
    stderr: str  # tail, capped
    duration_s: float
    files: dict[str, str] = field(default_factory=dict)  # collected result files by relative path
    # Processes the kernel killed at the run's memory cap (its cgroup's; 0 without one). When the
    # command itself was one of them, ``killed`` is "memory".
    oom_kills: int = 0


class Sandbox(Protocol):
    def run(
        self,
        workdir: Path,
        argv: list[str],
        limits: SandboxLimits,
        env: dict[str, str] | None = None,
        collect: Sequence[str] = (),
        consume: bool = False,
    ) -> SandboxResult: ...


# --------------------------------------------------------------------------- helpers


def default_python_paths() -> list[str]:
    """The Python installation(s) in use: prefixes and their resolved real paths."""
    out: list[str] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in out:
                out.append(q)
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def python_binds(paths: Sequence[str], system_paths: Sequence[str]) -> list[str]:
    """Paths to bind read-only besides the system ones: existing, not already visible, minimal."""
    kept: list[str] = []
    for raw in sorted({os.path.abspath(p) for p in paths}, key=len):
        if raw == "/":
            raise ValueError("refusing to bind the host's root directory into the sandbox")
        if not os.path.exists(raw):
            continue
        if any(_under(raw, s) for s in system_paths) or any(_under(raw, k) for k in kept):
            continue
        kept.append(raw)
    return kept


def rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
    """The rlimits applied before exec: (resource name, soft, hard)."""
    return [
        # SIGXCPU at the soft limit, SIGKILL a second later.
        ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
        ("RLIMIT_AS", limits.memory_mb * _MIB, limits.memory_mb * _MIB),
        ("RLIMIT_FSIZE", limits.file_size_mb * _MIB, limits.file_size_mb * _MIB),
        ("RLIMIT_NPROC", limits.max_procs, limits.max_procs),
        ("RLIMIT_CORE", 0, 0),
    ]


def _launcher_argv(spec: dict[str, object]) -> list[str]:
    return [sys.executable, "-I", "-S", _launch.__file__, json.dumps(spec)]


_PRLIMIT_FLAGS = {"RLIMIT_CPU": "--cpu", "RLIMIT_AS": "--as", "RLIMIT_FSIZE": "--fsize", "RLIMIT_NPROC": "--nproc",
                  "RLIMIT_CORE": "--core"}
PRLIMIT_FAILED = b"prlimit: failed to set"


def clamped_rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
    """:func:`rlimits` lowered to this process's own hard limits, which a child inherits and an
    unprivileged one cannot raise: asking for more would only make setting them fail."""
    out = []
    for name, soft, hard in rlimits(limits):
        current = resource.getrlimit(getattr(resource, name))[1]
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
            soft = min(soft, hard)
        out.append((name, soft, hard))
    return out


def prlimit_argv(prlimit: str, limits: SandboxLimits, argv: Sequence[str]) -> list[str]:
    """``prlimit`` (util-linux) setting the rlimits on itself, then exec'ing ``argv``: the same as
    the Python launcher's rlimits-then-exec, in a small C program instead of an interpreter."""
    return [prlimit, *(f"{_PRLIMIT_FLAGS[n]}={soft}:{hard}" for n, soft, hard in clamped_rlimits(limits)), "--", *argv]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _launch_failure(outcome: ProcessOutcome) -> str | None:
    if outcome.returncode == _launch.LAUNCH_FAILED and _launch.PREFIX.encode() in outcome.stderr:
        return _decode(outcome.stderr).strip().splitlines()[-1]
    return None


def _result(outcome: ProcessOutcome, files: dict[str, str], bwrap_status: bool, oom_kills: int = 0) -> SandboxResult:
    """Translate a process outcome. ``bwrap_status``: 128+N means the command died of signal N;
    ``oom_kills``: the kernel killed that many of the run's processes at its memory cap, so a
    command that died of SIGKILL was one of them."""
    killed = outcome.killed
    exit_code = outcome.returncode
    if killed is not None:
        exit_code = None
    elif exit_code is not None and exit_code < 0:
        killed, exit_code = f"signal:{_signal_name(-exit_code)}", None
    elif bwrap_status and exit_code is not None and 128 < exit_code < 128 + signal.NSIG:
        killed, exit_code = f"signal:{_signal_name(exit_code - 128)}", None
    if killed == "signal:SIGKILL" and oom_kills:
        killed = "memory"
    return SandboxResult(
        exit_code=exit_code,
        timed_out=outcome.killed == "timeout",
        killed=killed,
        stdout=_decode(outcome.stdout),
        stderr=_decode(outcome.stderr),
        duration_s=outcome.duration_s,
        files=files,
        oom_kills=oom_kills,
    )


def userns_hint() -> str:
    """The line an operator runs when bubblewrap is installed but cannot start."""

    def sysctl(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    if sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return "user namespaces are disabled: sudo sysctl -w kernel.unprivileged_userns_clone=1"
    if sysctl("/proc/sys/user/max_user_namespaces") == "0":
        return "user namespaces are disabled: sudo sysctl -w user.max_user_namespaces=15000"
    if sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "user namespaces are disabled for unprivileged users by AppArmor: "
            "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
        )
    return (
        "user namespaces are disabled or restricted: sudo sysctl -w kernel.unprivileged_userns_clone=1 "
        "(Debian) or sudo sysctl -w user.max_user_namespaces=15000"
    )


# --------------------------------------------------------------------------- bubblewrap


def bwrap_command(
    bwrap: str,
    argv: Sequence[str],
    *,
    workspace: Path,
    binds: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    limits: SandboxLimits,
    system_paths: Sequence[str] = SYSTEM_PATHS,
    info_fd: int | None = None,
    disable_userns: bool = True,
) -> list[str]:
    """The bwrap command line; ``binds`` are (host source, sandbox path) read-only binds."""
    cmd = [bwrap, "--unshare-all", "--unshare-user"]
    if disable_userns:
        cmd.append("--disable-userns")
    cmd += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    for path in system_paths:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    tmpfs_size = str(limits.memory_mb * _MIB)
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    cmd += ["--size", tmpfs_size, "--tmpfs", "/tmp", "--size", tmpfs_size, "--tmpfs", "/dev/shm"]
    # After the tmpfs mounts: a Python installation may live under /tmp (a CI checkout's venv).
    for src, dest in binds:
        cmd += ["--ro-bind", src, dest]
    cmd += ["--bind", str(workspace), WORKSPACE]
    # The root and /dev are tmpfs mounts of their own, unsized: writable, they would let the code
    # under test fill the host's memory. Only the workspace, /tmp and /dev/shm (sized) stay writable.
    cmd += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", WORKSPACE]
    if info_fd is not None:
        cmd += ["--info-fd", str(info_fd)]
    return [*cmd, "--", *argv]


class BwrapSandbox:
    """Bubblewrap sandbox.

    When the orchestrator runs as root, the sandbox runs as an unprivileged uid:
    ``uid``/``gid`` if given, else a fresh unused uid per run (``RUN_UID_RANGE``).
    The copy is chowned to it and the launcher drops to it before running bwrap,
    which then works unprivileged through a user namespace. This is what makes
    ``max_procs`` hold (root ignores RLIMIT_NPROC; the limit counts every host
    process of the uid, so a uid shared by concurrent runs would share it too) and
    keeps the code from touching root-owned files. Python installations the dropped
    uid cannot reach on the host (e.g. under a 0700 ``/root``) are staged through a
    private mount namespace of the launcher. When not root, the current uid is used
    (``max_procs`` then counts all of that user's processes) and ``uid``/``gid``
    must be left unset.

    ``cgroup`` is the ``sandbox_cgroup`` setting (``auto`` | ``off`` | a delegated cgroup v2
    folder, see ``sandbox/cgroups.py``): where runs get a group of their own that caps their total
    memory at ``total_memory_mb`` and their processes at ``max_procs``.
    """

    def __init__(
        self,
        bwrap: str = "bwrap",
        python_paths: Sequence[str | Path] | None = None,
        *,
        system_paths: Sequence[str] = SYSTEM_PATHS,
        uid: int | None = None,
        gid: int | None = None,
        disable_userns: bool = True,
        tail_bytes: int = TAIL_BYTES,
        cgroup: str = "auto",
    ) -> None:
        self.bwrap = bwrap
        paths = default_python_paths() if python_paths is None else [str(p) for p in python_paths]
        self.system_paths = tuple(system_paths)
        self.python_paths = python_binds(paths, self.system_paths)
        self.is_root = os.geteuid() == 0
        if self.is_root:
            self.uid: int | None = uid
            self.gid: int | None = (uid if gid is None else gid) if uid is not None else gid
        else:
            if uid is not None or gid is not None:
                raise ValueError("uid/gid can only be chosen when the orchestrator runs as root")
            self.uid = self.gid = None
        self.disable_userns = disable_userns
        self.tail_bytes = tail_bytes
        self.cgroups = detect(cgroup)

    def _run_ids(self) -> tuple[int, int] | None:
        """(uid, gid) to drop to for one run; None when not root (the current ids are used)."""
        if not self.is_root:
            return None
        uid = self.uid if self.uid is not None else secrets.choice(RUN_UID_RANGE)
        return uid, self.gid if self.gid is not None else uid

    def _bwrap_path(self) -> str:
        found = shutil.which(self.bwrap)
        if found is None:
            raise SandboxUnavailable(f"{INSTALL_HINT} (looked for {self.bwrap!r})")
        return os.path.abspath(found)

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        bins = [f"{p}/bin" for p in self.python_paths if os.path.isdir(f"{p}/bin")]
        env = {
            "PATH": ":".join([*bins, BASE_PATH]),
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(extra or {})
        return env

    def run(
        self,
        workdir: Path,
        argv: list[str],
        limits: SandboxLimits,
        env: dict[str, str] | None = None,
        collect: Sequence[str] = (),
        consume: bool = False,
    ) -> SandboxResult:
        if not argv:
            raise ValueError("argv is empty")
        collect_paths = check_collect_paths(collect)
        bwrap = self._bwrap_path()
        owner = self._run_ids()
        base = make_run_dir()
        group: RunCgroup | None = None
        try:
            workspace = (take_workspace if consume else copy_workspace)(Path(workdir), base, owner)
            clear_collected(workspace, collect_paths)
            stage: list[list[str]] = []
            binds = [(p, p) for p in self.python_paths]
            if owner is not None:  # root dropping to a uid: stage what that uid may not reach
                dirs = make_stage_dirs(base, len(binds))
                stage = [[src, str(d)] for (src, _), d in zip(binds, dirs)]
                binds = [(str(d), dest) for d, (_, dest) in zip(dirs, binds)]
            if self.cgroups is not None:
                group = self.cgroups.create(limits.total_memory_mb * _MIB, limits.max_procs)
            info = BwrapInfo()
            try:
                command = bwrap_command(
                    bwrap,
                    argv,
                    workspace=workspace,
                    binds=binds,
                    env=self._env(env),
                    limits=limits,
                    system_paths=self.system_paths,
                    info_fd=info.write_fd,
                    disable_userns=self.disable_userns,
                )
                spec: dict[str, object] = {
                    "rlimits": rlimits(limits),
                    "uid": owner[0] if owner else None,
                    "gid": owner[1] if owner else None,
                    "stage": stage,
                    "reap": True,
                    "argv": command,
                    "cgroup_procs": group.procs_files if group is not None else [],
                }
                outcome = run_captured(
                    _launcher_argv(spec),
                    env={"PATH": BASE_PATH, "LANG": "C.UTF-8"},
                    cwd=Path("/"),
                    timeout_s=limits.timeout_s,
                    max_output_bytes=limits.max_output_bytes,
                    tail_bytes=self.tail_bytes,
                    pass_fds=(info.write_fd,),
                    on_start=info.on_start,
                    kill_hook=info.kill,
                )
            finally:
                info.finish(_GONE_TIMEOUT_S)
            # Once bubblewrap reported its child, the exit code and stderr are the command's own:
            # code under test that prints the launcher's words and exits with its code is a failed
            # test run, not a sandbox that cannot start (which would end the whole run).
            failure = None if info.started else _launch_failure(outcome)
            if failure is not None:
                raise SandboxUnavailable(f"sandbox launcher failed: {failure}")
            if not info.started and outcome.killed is None:
                said = _decode(outcome.stderr).strip()[-2000:]
                raise SandboxUnavailable(f"bubblewrap could not start the sandbox: {said}\n{userns_hint()}")
            files = read_back(workspace, collect_paths)
            return _result(outcome, files, bwrap_status=True, oom_kills=group.oom_kills() if group is not None else 0)
        finally:
            if group is not None:
                group.close()
            remove_run_dir(base)

    def probe(self) -> None:
        """Start a trivial sandbox; raise ``SandboxUnavailable`` if that fails."""
        with tempfile.TemporaryDirectory(prefix="autopack-probe-") as tmp:
            result = self.run(Path(tmp), ["true"], SandboxLimits(timeout_s=60, cpu_s=10))
        if result.exit_code != 0:
            raise SandboxUnavailable(
                f"bubblewrap started but the probe failed ({result.killed or result.exit_code}): "
                f"{result.stderr.strip()[-2000:]}\n{userns_hint()}"
            )


def check_bwrap(bwrap: str = "bwrap", cgroup: str = "auto") -> BwrapSandbox:
    """The sandbox, once it started a trivial command; raise ``SandboxUnavailable`` (with the
    command that fixes it) otherwise. ``cgroup``: the ``sandbox_cgroup`` setting."""
    if shutil.which(bwrap) is None:
        raise SandboxUnavailable(f"{INSTALL_HINT} (looked for {bwrap!r})")
    sandbox = BwrapSandbox(bwrap, cgroup=cgroup)
    sandbox.probe()
    return sandbox


# --------------------------------------------------------------------------- no sandbox


class UnsandboxedRunner:
    """Same interface and limits as ``BwrapSandbox`` but **no isolation whatsoever**.

    The command runs as the orchestrator's own user, on a throw-away copy of the
    workspace, with the host's network, file system and processes in reach; only
    the rlimits (RLIMIT_NPROC is ignored for root, and counts all of the user's
    processes otherwise), the timeout and the output cap apply. A process that
    leaves its session escapes the timeout kill. For operators who explicitly opt
    out of the sandbox only.
    """

    def __init__(self, tail_bytes: int = TAIL_BYTES, *, use_prlimit: bool = True) -> None:
        self.tail_bytes = tail_bytes
        # util-linux's prlimit applies the rlimits and execs, in about a millisecond; without it
        # the Python launcher does the same (an interpreter start, tens of milliseconds).
        self.prlimit = shutil.which("prlimit") if use_prlimit else None

    def run(
        self,
        workdir: Path,
        argv: list[str],
        limits: SandboxLimits,
        env: dict[str, str] | None = None,
        collect: Sequence[str] = (),
        consume: bool = False,
    ) -> SandboxResult:
        if not argv:
            raise ValueError("argv is empty")
        collect_paths = check_collect_paths(collect)
        base = make_run_dir()
        try:
            workspace = (take_workspace if consume else copy_workspace)(Path(workdir), base, None)
            clear_collected(workspace, collect_paths)
            home = base / "home"
            home.mkdir()
            bin_dir = os.path.dirname(sys.executable)
            full_env = {
                "PATH": f"{bin_dir}:{BASE_PATH}",
                "HOME": str(home),
                "TMPDIR": str(home),
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            full_env.update(env or {})
            if self.prlimit is not None:
                command = prlimit_argv(self.prlimit, limits, argv)
            else:
                command = _launcher_argv({"rlimits": clamped_rlimits(limits), "argv": list(argv)})
            outcome = run_captured(
                command,
                env=full_env,
                cwd=workspace,
                timeout_s=limits.timeout_s,
                max_output_bytes=limits.max_output_bytes,
                tail_bytes=self.tail_bytes,
            )
            failure = _launch_failure(outcome)
            if failure is None and self.prlimit is not None and outcome.returncode == 1 and outcome.stderr.startswith(PRLIMIT_FAILED):
                failure = _decode(outcome.stderr).strip().splitlines()[0]
            if failure is not None:
                raise SandboxUnavailable(f"launcher failed: {failure}")
            files = read_back(workspace, collect_paths)
            return _result(outcome, files, bwrap_status=False)
        finally:
            remove_run_dir(base)

