"""The throw-away copy of a workspace a sandboxed run works in.

Layout of one run's temp folder (mode 0711, so a dropped uid can reach its parts
without listing it)::

    <base>/workspace   the copy, owned by the sandbox uid when one is set
    <base>/stage/<i>   empty mount points for staged read-only binds
    <base>/home        HOME and TMPDIR of an unsandboxed run
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

MAX_COLLECT_BYTES = 16 * 1024 * 1024
log = logging.getLogger("autopack.sandbox")


def check_collect_paths(paths: Iterable[str]) -> list[str]:
    """Validate result-file paths: relative, normalised, inside the workspace."""
    out: list[str] = []
    for raw in paths:
        p = PurePosixPath(raw)
        if not raw or p.is_absolute() or ".." in p.parts or str(p) in ("", "."):
            raise ValueError(f"collect path must be relative and inside the workspace: {raw!r}")
        out.append(raw)
    return out


def _skip_special(dirpath: str, names: list[str]) -> list[str]:
    """copytree ``ignore``: leave out FIFOs, sockets and devices (copying a FIFO blocks)."""
    skipped = []
    for name in names:
        try:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
        except OSError:
            skipped.append(name)
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.append(name)
    return skipped


def make_run_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="autopack-sandbox-"))
    os.chmod(base, 0o711)
    return base


def copy_workspace(src: Path, base: Path, owner: tuple[int, int] | None) -> Path:
    """Copy ``src`` to ``base/workspace`` (symlinks kept as links); chown to ``owner``."""
    if not src.is_dir():
        raise NotADirectoryError(f"workdir is not a directory: {src}")
    dest = base / "workspace"
    shutil.copytree(src, dest, symlinks=True, ignore=_skip_special)
    os.chmod(dest, 0o700)  # the candidate's files: not for other local users to read
    if owner is not None:
        _chown_tree(dest, owner)
    return dest


def take_workspace(src: Path, base: Path, owner: tuple[int, int] | None) -> Path:
    """Move the throw-away folder ``src`` to ``base/workspace`` (a rename: no file is written
    again) and chown it to ``owner``; copy it, then delete it, when the two are on different file
    systems. ``src`` is gone afterwards either way."""
    if not src.is_dir() or src.is_symlink():
        raise NotADirectoryError(f"workdir is not a directory: {src}")
    dest = base / "workspace"
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_workspace(src, base, None)
        shutil.rmtree(src)
    os.chmod(dest, 0o700)  # the candidate's files: not for other local users to read
    if owner is not None:
        _chown_tree(dest, owner)
    return dest


def _chown_tree(dest: Path, owner: tuple[int, int]) -> None:
    """Give the tree to ``owner``, without following links and without recursion (``os.walk``
    recurses on Python 3.11, and a candidate may hold folders nested deeper than its stack)."""
    uid, gid = owner
    os.lchown(dest, uid, gid)
    stack = [str(dest)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                os.lchown(entry.path, uid, gid)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


def make_stage_dirs(base: Path, count: int) -> list[Path]:
    stage = base / "stage"
    stage.mkdir(mode=0o755)
    os.chmod(stage, 0o755)
    out = []
    for i in range(count):
        d = stage / str(i)
        d.mkdir(mode=0o755)
        out.append(d)
    return out


def clear_collected(workspace: Path, paths: Sequence[str]) -> None:
    """Remove what the copy already holds at the result paths, before the run: a result must be the
    run's own (a report the commit carries would pass for it when the command writes none). The
    copy's content comes from the commit, so no symlink on the way is followed."""
    for rel in paths:
        target = workspace
        try:
            for part in PurePosixPath(rel).parts[:-1]:
                target = target / part
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    break  # a file or a symlink: nothing can be read back below it either
            else:
                target = target / PurePosixPath(rel).parts[-1]
                if stat.S_ISDIR(os.lstat(target).st_mode):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
        except FileNotFoundError:
            continue


def read_back(workspace: Path, paths: Sequence[str], max_bytes: int = MAX_COLLECT_BYTES) -> dict[str, str]:
    """Read the requested files from the copy, never following a symlink.

    The sandboxed code controls the copy, so a result file could be a symlink to a
    host file only the orchestrator may read: every component is opened with
    ``O_NOFOLLOW`` relative to its parent, and only regular files are read. A missing
    or refused file is simply absent from the answer.
    """
    out: dict[str, str] = {}
    for rel in paths:
        data = _read_no_follow(workspace, PurePosixPath(rel).parts, max_bytes)
        if data is not None:
            out[rel] = data.decode("utf-8", errors="replace")
    return out


def _read_no_follow(root: Path, parts: tuple[str, ...], max_bytes: int) -> bytes | None:
    fds: list[int] = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        for part in parts[:-1]:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds[-1])
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = max_bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)


def remove_run_dir(base: Path) -> None:
    """Delete the run folder even if the sandboxed code removed permissions inside it. Nothing
    outside it is touched: the folder above it (the system's temp folder) keeps its mode, also when
    the run folder is gone already (two cleanups at once) or is not a folder."""
    root = str(base)

    def fix_and_retry(func: Callable[..., object], path: str, exc_info: object) -> None:
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if isinstance(exc, FileNotFoundError) or path == root:
            return  # gone already; or the run folder itself (a link, say): left as it is, logged below
        try:
            parent = os.path.dirname(path)
            if parent == root or parent.startswith(root + os.sep):
                os.chmod(parent, 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                if func in (os.open, os.scandir, os.listdir):
                    # A folder that could not be listed (made unreadable by the tests): removed now
                    # that it can be; rmtree's own rmdir of it then finds it gone.
                    shutil.rmtree(path, onerror=fix_and_retry)
                    return
            func(path)
        except Exception:  # noqa: BLE001 - what cannot be removed stays; the check below logs it
            pass

    try:
        shutil.rmtree(base, onerror=fix_and_retry)
    except RecursionError:
        # Folders nested deeper than Python's stack (shutil.rmtree recurses on 3.11), made by the
        # code under test: coreutils walk any depth.
        subprocess.run(["chmod", "-R", "u+rwx", "--", str(base)], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(base)], capture_output=True, check=False)
    if os.path.lexists(base):
        log.warning("could not remove the sandbox run folder %s", base)
