"""A control group per sandboxed run: a cap on the memory and the number of processes of the whole run.

The rlimits are per process: ``RLIMIT_AS`` lets each process have ``memory_mb``, so a test suite
that starts several processes (or fills the sandbox's ``/tmp``) can use many times that. Where the
host lets the worker make cgroups, each run gets one of its own, with ``memory`` (processes and the
files of its tmpfs mounts, no swap) capped at ``total_memory_mb`` and ``pids`` at ``max_procs``; a
run that goes over has a process killed by the kernel, and the result says so (``oom_kills``).

Where the groups come from (the ``sandbox_cgroup`` setting, ``AUTOPACK_SANDBOX_CGROUP``):

- ``auto`` (default): cgroup v1, when the ``memory`` and ``pids`` hierarchies are mounted and the
  worker may make groups under its own (a root worker on a v1 host). On a cgroup v2 host a process
  cannot make groups with controllers under its own group (the "no internal processes" rule), so
  ``auto`` finds none there and the rlimits alone apply.
- a path: a cgroup v2 folder delegated to the worker (systemd's ``Delegate=yes``, or a container's
  own folder), with ``memory`` and ``pids`` in its ``cgroup.subtree_control`` or allowed there. A
  path that is not such a folder stops the worker with the reason.
- ``off``: none.

A run's group is named ``autopack-sandbox-<pid namespace>-<worker pid>-<random>``. The sandbox's
launcher joins it before it starts anything, so every process of the run is in it. When the run is
over, whatever is left in it is killed and the group removed. Groups that a killed worker left
behind are removed by the next worker of the same pid namespace that starts (a pid is only known to
be gone within its own namespace).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autopack.errors import SandboxUnavailable

PREFIX = "autopack-sandbox-"
CONTROLLERS = ("memory", "pids")
_CLOSE_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- what the host has


@dataclass(frozen=True)
class Mount:
    point: str
    root: str  # the hierarchy's folder mounted there ("/" unless a container mounts its own part)
    fstype: str
    options: frozenset[str]  # super options: the controllers of a v1 hierarchy


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts of ``/proc/self/mountinfo``."""
    out: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append(Mount(point=_unescape(fields[4]), root=_unescape(fields[3]), fstype=tail[0],
                         options=frozenset(tail[2].split(","))))
    return out


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the v2 group is under the key ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def v1_groups(mounts: Sequence[Mount], membership: Mapping[str, str]) -> dict[str, Path] | None:
    """This process's own folder in each v1 hierarchy of ``CONTROLLERS``, or None if one is missing
    (not mounted, or this process not placed in it)."""
    found: dict[str, Path] = {}
    for controller in CONTROLLERS:
        path = membership.get(controller)
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if path is None or mount is None:
            return None
        root = mount.root.rstrip("/")
        if root and path != root and not path.startswith(root + "/"):
            return None  # our group is outside the part of the hierarchy mounted here
        found[controller] = Path(mount.point, path[len(root):].lstrip("/"))
    return found


# --------------------------------------------------------------------------- one run's group


@dataclass
class RunCgroup:
    """One run's group: a folder per v1 hierarchy (memory first), or one v2 folder."""

    version: int
    dirs: tuple[Path, ...]

    @property
    def procs_files(self) -> list[str]:
        """The files the launcher writes its pid to, to join the group."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def set_caps(self, memory_bytes: int, max_pids: int) -> None:
        """Cap the memory (no swap) and the processes of whatever joins. Raises ``SandboxUnavailable``."""
        if self.version == 1:
            memory, pids = self.dirs
            # memsw (memory + swap) may never be below memory: lift it, set memory, then set it
            # equal. It is absent without swap accounting.
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, "-1")
            _write(memory / "memory.limit_in_bytes", str(memory_bytes))
            if memsw.exists():
                _write(memsw, str(memory_bytes))
            _write(pids / "pids.max", str(max_pids))
        else:
            (d,) = self.dirs
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(max_pids))

    def oom_kills(self) -> int:
        """How many of the run's processes the kernel killed at the memory cap."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.dirs[0] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(out)

    def _kill_all(self, pids: list[int]) -> None:
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            _write(kill_file, "1", quiet=True)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def close(self, timeout_s: float = _CLOSE_TIMEOUT_S) -> bool:
        """Kill whatever is left in the group and remove it; False if it could not be removed in
        ``timeout_s`` (the next worker's sweep removes it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = [d for d in self.dirs if d.exists()]
            if not left:
                return True
            self._kill_all(self.pids())
            for d in left:
                try:
                    d.rmdir()
                except OSError:
                    pass
            if not any(d.exists() for d in self.dirs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _write(path: Path, value: str, *, quiet: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        if not quiet:
            raise SandboxUnavailable(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def group_name() -> str:
    """A new run group's name: the worker's pid namespace and pid, and a random part."""
    return f"{PREFIX}{_pid_namespace()}-{os.getpid()}-{secrets.token_hex(4)}"


def _creator_alive(name: str) -> bool:
    """Whether the worker that made group ``name`` may still be running (True when unsure)."""
    parts = name[len(PREFIX):].split("-")
    if len(parts) < 3 or parts[0] != _pid_namespace() or not parts[1].isdigit():
        return True  # another pid namespace's, or not one of ours: leave it
    pid = parts[1]
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the host's support


@dataclass(frozen=True)
class Cgroups:
    """Where this worker makes its runs' groups: ``parents`` (v1: one per controller, memory first).

    Joining a group costs the launcher about 10 ms on cgroup v1 (the kernel waits for an RCU grace
    period to move a process), a fifth of a bubblewrap start; keeping groups for reuse does not
    save it, so each run makes its own."""

    version: int
    parents: tuple[Path, ...]

    def describe(self) -> str:
        where = ", ".join(str(p) for p in self.parents)
        return f"cgroup v{self.version} under {where}"

    def create(self, memory_bytes: int, max_pids: int) -> RunCgroup:
        """A new empty group for one run, with the caps set. Raises ``SandboxUnavailable``."""
        group = RunCgroup(self.version, tuple(p / group_name() for p in self.parents))
        try:
            for d in group.dirs:
                d.mkdir()
            group.set_caps(memory_bytes, max_pids)
        except OSError as exc:
            group.close()
            raise SandboxUnavailable(f"cannot make the run's cgroup under {self.describe()}: {exc.strerror}") from None
        except SandboxUnavailable:
            group.close()
            raise
        return group

    def sweep(self) -> int:
        """Remove the groups that workers which are gone left behind; how many were removed."""
        removed = 0
        names: set[str] = set()
        for parent in self.parents:
            try:
                names.update(e.name for e in os.scandir(parent) if e.is_dir() and e.name.startswith(PREFIX))
            except OSError:
                continue
        for name in sorted(names):
            if not _creator_alive(name) and RunCgroup(self.version, tuple(p / name for p in self.parents)).close(1.0):
                removed += 1
        return removed


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _usable(parents: Sequence[Path]) -> bool:
    """Whether a group can be made (and removed) under each of ``parents``."""
    probe = group_name()
    made: list[Path] = []
    try:
        for p in parents:
            (p / probe).mkdir()
            made.append(p / probe)
        return True
    except OSError:
        return False
    finally:
        for d in made:
            try:
                d.rmdir()
            except OSError:
                pass


def delegated_v2(folder: Path) -> Cgroups:
    """A cgroup v2 folder named by the operator, with ``memory`` and ``pids`` enabled for its
    children (enabled here if they are not yet). Raises ``SandboxUnavailable`` with the reason."""
    controllers = folder / "cgroup.controllers"
    if not folder.is_absolute() or not controllers.is_file():
        raise SandboxUnavailable(f"AUTOPACK_SANDBOX_CGROUP={folder} is not a cgroup v2 folder (it has no cgroup.controllers); "
                                 "name a folder under /sys/fs/cgroup delegated to the worker, or set it to auto or off")
    available = set(_read(str(controllers)).split())
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        raise SandboxUnavailable(f"the cgroup {folder} lacks the {' and '.join(missing)} controller(s): "
                                 f"enable them in its parent's cgroup.subtree_control")
    enabled = set(_read(str(folder / "cgroup.subtree_control")).split())
    wanted = [c for c in CONTROLLERS if c not in enabled]
    if wanted:
        try:
            _write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except SandboxUnavailable as exc:
            raise SandboxUnavailable(f"{exc}; a folder that holds processes cannot enable controllers for its children: "
                                     f"move the worker into a child folder of {folder} first") from None
    found = Cgroups(2, (folder,))
    if not _usable(found.parents):
        raise SandboxUnavailable(f"the worker may not make groups under {folder}: delegate it to the worker's user")
    return found


def detect(setting: str = "auto", *, proc: str = "/proc/self") -> Cgroups | None:
    """The groups the sandbox uses per ``setting`` (``auto`` | ``off`` | a cgroup v2 folder); None
    when there are none (the rlimits alone apply). Leftover groups of gone workers are removed."""
    value = setting.strip()
    if value == "off":
        return None
    if value != "auto":
        found: Cgroups | None = delegated_v2(Path(value))
    else:
        groups = v1_groups(parse_mountinfo(_read(f"{proc}/mountinfo")), parse_proc_cgroup(_read(f"{proc}/cgroup")))
        found = Cgroups(1, tuple(groups[c] for c in CONTROLLERS)) if groups and _usable(list(groups.values())) else None
    if found is not None:
        found.sweep()
    return found
