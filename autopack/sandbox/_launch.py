"""Launcher that prepares the process which then becomes ``bwrap`` (or the command).

Run as its own short-lived process (``python -I -S _launch.py SPEC_JSON``) so that no
code runs between fork and exec in the orchestrator (``preexec_fn`` is unsafe in a
threaded worker). Standard library only. It:

0. joins the run's cgroup when given one (writes its pid to each ``cgroup.procs``), so
   everything it starts is in it;
1. when asked to stage paths (only as root): enters a private mount namespace and
   bind-mounts each source onto a staging directory, so that a path the sandbox uid
   cannot reach on the host (e.g. a Python under ``/root/.pyenv``, ``/root`` being
   0700) can still be bound into the sandbox by an unprivileged ``bwrap``. The
   namespace is private to this process tree; the host mount table is untouched;
2. sets the rlimits;
3. drops to the sandbox uid/gid (no supplementary groups) when asked;
4. execs the command — or, with ``reap``, becomes a child subreaper, runs the
   command as its child, reaps every orphan that lands on it (bwrap's outer
   process may exit before the sandbox's init is reaped) and exits with the
   command's status only once all of them are gone. It dies with its parent.

On failure it writes one line to stderr and exits with ``LAUNCH_FAILED``; when
only the final exec fails it exits 127 like a shell would.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from typing import Any

LAUNCH_FAILED = 125
EXEC_FAILED = 127
PREFIX = "autopack-sandbox launch failed: "

_CLONE_NEWNS = 0x00020000
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _stage(pairs: list[list[str]]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    for src, dst in pairs:
        _check(libc.mount(os.fsencode(src), os.fsencode(dst), None, _MS_BIND | _MS_REC, None), f"bind {src}")


def launch(spec: dict[str, Any]) -> None:
    """Apply ``spec`` to this process and exec its argv; never returns."""
    parent = os.getppid()
    for procs in spec.get("cgroup_procs", []):  # first, while still root: all that follows is in it
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    if spec.get("stage"):
        _stage(spec["stage"])
    for name, soft, hard in spec.get("rlimits", []):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    uid, gid = spec.get("uid"), spec.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    argv: list[str] = spec["argv"]
    if spec.get("reap"):
        _run_and_reap(argv, parent)
    _exec(argv)


def _exec(argv: list[str]) -> None:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:  # like a shell: the command itself could not be run
        sys.stderr.write(f"{argv[0]}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(EXEC_FAILED)


def _run_and_reap(argv: list[str], parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    # Set after any uid change (a credential change clears it); then make sure the
    # parent did not already go.
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(LAUNCH_FAILED)
    child = os.fork()
    if child == 0:
        _exec(argv)
    status: int | None = None
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status = st
    assert status is not None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    try:
        launch(json.loads(sys.argv[1]))
    except BaseException as exc:  # report anything, then leave without cleanup
        sys.stderr.write(f"{PREFIX}{type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(LAUNCH_FAILED)


if __name__ == "__main__":
    main()
