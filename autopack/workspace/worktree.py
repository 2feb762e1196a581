"""Workspaces on the target repository: detached worktrees, deterministic phase
commits, compare-and-set ref moves, throw-away exports.

Nothing here ever checks out or moves the user's base branch. Worktrees are
always *detached*, so moving a branch ref (the run's integration branch
``autopack/<run-id>``) never collides with a checkout. Refs move only through
:func:`update_ref_cas` (DESIGN invariant 3).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from autopack.errors import GitError, UnsafePath
from autopack.workspace.git import MODE_EXECUTABLE, MODE_FILE, MODE_GITLINK, Git, LogEntry, RefMovedAt

__all__ = [
    "CANDIDATE_REF_PREFIX",
    "ensure_worktree",
    "remove_worktree",
    "create_branch",
    "update_ref_cas",
    "keep_ref",
    "write_changes",
    "commit_candidate",
    "changed_paths",
    "diff",
    "export_tree",
    "branch_log",
]

CANDIDATE_REF_PREFIX = "refs/autopack/candidates/"

log = logging.getLogger(__name__)

_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


# -- worktrees ----------------------------------------------------------------


def _common_dir(git: Git) -> Path:
    out = git.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip()
    return Path(out).resolve()


@functools.lru_cache(maxsize=256)
def _repo_common_dir(repo: Path) -> Path:
    """The common git directory of the target repository ``repo`` (resolved): where a repository's
    git directory is does not change while Autopack works on it, so it is asked once per process."""
    return _common_dir(Git(repo))


# In the repository's common git directory: held while worktrees are added, removed or pruned.
ADMIN_LOCK = "autopack-worktrees.lock"


@contextlib.contextmanager
def _worktree_admin(repo: Path) -> Iterator[None]:
    """Serialize worktree administration on ``repo`` across this machine's processes and threads.

    ``git worktree prune`` deletes an administrative folder (``.git/worktrees/<id>``) that has no
    ``gitdir`` file yet, which is what a concurrent ``git worktree add`` has just made: runs started
    together on one repository failed their setup with "could not open .git/worktrees/<id>/gitdir"
    or "failed to read .../commondir". Two adds race as well: an add reads every registered
    worktree's folder, and one half made by the other fails it (a shared lock for adds, exclusive
    for prune, failed 5 times in 6 in tests/workspace/test_worktree.py). So every add, remove and
    prune takes an exclusive ``flock`` on a file in the common git directory (each caller opens it
    anew, so threads of one process exclude each other too)."""
    lock_path = _repo_common_dir(Path(repo).resolve()) / ADMIN_LOCK
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _worktree_dirs(path: Path) -> tuple[Path, Path, Path] | None:
    """``(top, git dir, common dir)`` of the working tree at ``path`` in one git call, or
    ``None`` when ``path`` is not inside one."""
    if not (path / ".git").exists():
        return None
    try:
        out = Git(path).run(
            "rev-parse", "--path-format=absolute", "--show-toplevel", "--git-dir", "--git-common-dir"
        ).splitlines()
    except GitError:
        return None
    if len(out) != 3:
        return None
    top, git_dir, common = (Path(x.strip()).resolve() for x in out)
    return top, git_dir, common


def _is_linked_layout(repo: Path, path: Path) -> bool:
    """Whether ``path`` is, by git's own files, the top of a linked worktree of ``repo``: its
    ``.git`` file names ``<common dir>/worktrees/<id>``, whose ``gitdir`` file names ``path/.git``
    back and whose ``commondir`` leads to ``repo``'s common directory. Read without running git;
    anything else (and any doubt) is left to :func:`_worktree_dirs`."""
    dotgit = path / ".git"
    try:
        if dotgit.is_symlink() or not dotgit.is_file():
            return False
        text = dotgit.read_text("utf-8").strip()
        if not text.startswith("gitdir:") or "\n" in text:
            return False
        admin = Path(text[len("gitdir:"):].strip())
        common = _repo_common_dir(repo.resolve())
        if not admin.is_absolute() or admin.parent != common / "worktrees" or not (admin / "HEAD").is_file():
            return False
        back = Path((admin / "gitdir").read_text("utf-8").strip())
        commondir = Path((admin / "commondir").read_text("utf-8").strip())
    except (OSError, UnicodeDecodeError, GitError):
        return False
    commondir = commondir if commondir.is_absolute() else admin / commondir
    return back == dotgit.resolve() and commondir.resolve() == common and path.resolve() == back.parent


def _classify(repo: Path, path: Path) -> str | None:
    """``"linked"`` when ``path`` is the top of a linked worktree of ``repo``, ``"main"`` when it
    is ``repo``'s own checkout (the user's; never reset), ``None`` otherwise."""
    if _is_linked_layout(repo, path):  # the usual case, answered without a git process
        return "linked"
    dirs = _worktree_dirs(path)
    if dirs is None:
        return None
    top, git_dir, common = dirs
    try:
        # The cached answer is checked again on a mismatch, so a repository re-created differently stays right.
        if top != path.resolve() or (common != _repo_common_dir(repo.resolve()) and common != _common_dir(Git(repo))):
            return None
    except GitError:
        return None
    return "main" if git_dir == common else "linked"


def _is_stale_worktree_of(repo: Path, path: Path) -> bool:
    """A directory left by a worktree of ``repo`` whose registration is gone (pruned)."""
    dotgit = path / ".git"
    if not dotgit.is_file() or dotgit.is_symlink():
        return False
    try:
        text = dotgit.read_text("utf-8").strip()
    except OSError:
        return False
    if not text.startswith("gitdir:"):
        return False
    gitdir = Path(text[len("gitdir:") :].strip())
    try:
        worktrees = (_common_dir(Git(repo)) / "worktrees").resolve()
    except GitError:
        return False
    return gitdir.resolve().parent == worktrees and not (gitdir / "HEAD").exists()


def _reset_clean(git: Git, commit: str) -> None:
    """Detach HEAD at ``commit`` and make the worktree exactly its tree (no untracked files)."""
    # ``checkout --detach --force``: HEAD is detached (no branch moves, whatever was checked out)
    # and tracked files and the index become the commit's, local changes discarded.
    git.run("checkout", "--quiet", "--force", "--detach", f"{commit}^{{commit}}")
    git.run("clean", "-ffdxq")


def ensure_worktree(repo: Path, path: Path, commit: str, *, reset: bool = True) -> Path:
    """A detached worktree of ``repo`` at ``path``, clean and checked out at ``commit``.

    An existing worktree is reset hard and cleaned (``git clean -ffdx``). A missing
    one (deleted, or this is another machine) is pruned and recreated. A directory
    at ``path`` that is neither a worktree of ``repo`` nor the remains of one is
    refused with :class:`GitError` rather than deleted. Returns the resolved path.

    An existing worktree that cannot be reset (a stale ``index.lock``, a torn index left
    by a git process killed mid-write) is removed and recreated.

    ``reset=False`` leaves an existing worktree as it is; a recreated one is always at
    ``commit``.
    """
    repo = Path(repo).resolve()
    path = Path(path).absolute()
    git = Git(repo)
    sha = _commit_id(git, commit)  # a full id is checked by the checkout below (``^{commit}``)
    if sha is None:
        raise GitError(f"ensure_worktree: {commit!r} is not a commit in {repo}")

    kind = _classify(repo, path) if path.exists() else None
    if kind == "main":
        raise GitError(
            f"ensure_worktree: {path} is the repository's own checkout; refusing to reset it"
        )
    if kind == "linked":
        if not reset:
            return path.resolve()
        try:
            _reset_clean(Git(path), sha)
            return path.resolve()
        except GitError as exc:
            _require_commit(git, sha, "ensure_worktree", exc)  # bad input, not a broken worktree: leave it be
            # A git process killed mid-write (a worker's whole process group SIGKILLed on a deploy,
            # or by the OOM killer) leaves an index.lock or a torn index behind, and every reset
            # would fail from then on. A worktree holds nothing the repository does not: it is
            # thrown away and made again.
            log.warning("worktree %s could not be reset (%s); recreating it", path, exc)
            shutil.rmtree(path)

    if path.is_symlink():
        raise GitError(f"ensure_worktree: {path} is a symlink; refusing to use it")
    with _worktree_admin(repo):
        if path.exists():
            if _is_stale_worktree_of(repo, path):
                shutil.rmtree(path)
            elif not path.is_dir() or any(path.iterdir()):
                raise GitError(
                    f"ensure_worktree: {path} exists and is not a worktree of {repo}; "
                    "refusing to overwrite it"
                )
        git.run("worktree", "prune")
        path.parent.mkdir(parents=True, exist_ok=True)
        # -f: also take over a registration whose directory was deleted but not pruned; -f twice: even
        # one still locked, as a `worktree add` killed mid-checkout leaves it ("initializing", which
        # prune skips): a single -f failed on every later delivery and the run could not go on.
        _require_commit(git, sha, "ensure_worktree")
        git.run("worktree", "add", "--force", "--force", "--detach", "--quiet", str(path), sha)
    # A fresh worktree is checked out at ``sha`` with no untracked files: nothing to reset.
    return path.resolve()


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove the worktree at ``path`` (whatever its state) and prune its registration.

    Absent worktrees are fine (idempotent). A directory that is not a worktree of
    ``repo`` is left alone.
    """
    repo = Path(repo).resolve()
    path = Path(path).absolute()
    git = Git(repo)
    with _worktree_admin(repo):
        kind = _classify(repo, path) if path.exists() else None
        if kind == "linked":
            git.run("worktree", "remove", "--force", "--force", str(path.resolve()))
        elif path.exists() and _is_stale_worktree_of(repo, path):
            shutil.rmtree(path)
        elif not path.exists():
            # A registration left locked by a killed `worktree add` survives prune: remove it by path
            # (git says so, harmlessly, when there is none).
            git.run_bytes("worktree", "remove", "--force", "--force", str(path), check=False)
        git.run("worktree", "prune")


# -- refs ---------------------------------------------------------------------


def _check_ref_name(git: Git, ref: str) -> None:
    if not ref.startswith("refs/") or ref.startswith("-"):
        raise GitError(f"not a full ref name (must start with refs/): {ref!r}")
    if not _valid_ref_name(ref):
        raise GitError(f"invalid ref name: {ref!r}")


# Components made only of these characters, not starting with "." and not ending with ".lock" or ".",
# are valid for git whatever else its rules say; anything else is left to ``git check-ref-format``.
_PLAIN_COMPONENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def _valid_ref_name(ref: str) -> bool:
    """``git check-ref-format``'s answer. The names Autopack makes (``refs/autopack/<run>/<phase>/<n>``,
    ``refs/heads/autopack/<run>``) are plain and decided here without a process."""
    parts = ref.split("/")
    if all(_PLAIN_COMPONENT.match(c) and ".." not in c and not c.endswith((".", ".lock")) for c in parts):
        return True
    return _git_says_valid_ref_name(ref)


@functools.lru_cache(maxsize=1024)
def _git_says_valid_ref_name(ref: str) -> bool:
    return Git(Path(tempfile.gettempdir())).run_bytes("check-ref-format", ref, check=False).returncode == 0


def update_ref_cas(repo: Path, ref: str, new: str, expected_old: str | None, *, stale_lock_s: float | None = None) -> None:
    """Move ``ref`` to ``new`` only if it is at ``expected_old`` (``None``: only if absent).

    Runs ``git update-ref <ref> <new> <expected-old>``, which git performs
    atomically under the ref's lock.

    Idempotent retry: if ``ref`` is *already* at ``new`` this returns successfully
    without touching it, whatever ``expected_old`` says. Phase commits are
    deterministic, so a ref already at ``new`` means this very move was done
    before (e.g. by a worker that died before recording it).

    Raises :class:`RefMovedAt` (a :class:`RefMoved`) carrying the ref's actual value
    when it is elsewhere; :class:`GitError` for other failures (unknown commit,
    lock held by another process).

    With ``stale_lock_s``, a lock file of this very ref older than that many seconds is
    taken for the remains of a git process killed mid-update (git holds it for
    milliseconds): it is removed and the move tried once more. Only for refs that no one
    but Autopack writes.
    """
    git = Git(repo)
    _check_ref_name(git, ref)
    new_sha = _commit_id(git, new)  # update-ref itself refuses a full id of no object or of a non-commit
    if new_sha is None:
        raise GitError(f"update_ref_cas: {new!r} is not a commit")
    old_sha: str | None = None
    if expected_old is not None:
        old_sha = expected_old if _is_full_id(expected_old, len(new_sha)) else (git.rev_parse(expected_old) or expected_old)
        _check_ref_arg(old_sha)

    # The move is tried first; git checks ``old`` under the ref's lock. Only a refusal needs
    # the ref read: already at ``new`` (this move was done before) is success.
    zero = "0" * len(new_sha)  # the all-zero id of this repository's hash: "must not exist"
    proc = _update_ref(git, repo, ref, "autopack", [new_sha, old_sha or zero], stale_lock_s)
    if proc.returncode == 0:
        return
    actual = git.rev_parse(ref, peel_commit=False)
    if actual == new_sha:
        return
    if actual != old_sha:
        raise RefMovedAt(ref, old_sha, actual)
    raise GitError(
        f"git update-ref {ref} failed: {proc.stderr.decode('utf-8', 'replace').strip()}"
    )


def _update_ref(git: Git, repo: Path, ref: str, message: str, values: list[str],
                stale_lock_s: float | None) -> subprocess.CompletedProcess[bytes]:
    """``git update-ref -m message ref values…``; when it fails and ``ref`` has a lock file older
    than ``stale_lock_s`` (a killed git's remains), the lock is removed and it is tried once more."""
    proc = git.run_bytes("update-ref", "-m", message, ref, *values, check=False)
    if proc.returncode != 0 and stale_lock_s is not None and _remove_stale_lock(repo, ref, stale_lock_s):
        proc = git.run_bytes("update-ref", "-m", message, ref, *values, check=False)
    return proc


def _remove_stale_lock(repo: Path, ref: str, older_than_s: float) -> bool:
    """Remove ``ref``'s lock file if it is older than ``older_than_s``; whether it did."""
    lock = _repo_common_dir(Path(repo).resolve()) / f"{ref}.lock"
    try:
        age = time.time() - lock.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age < older_than_s:
        return False
    log.warning("removing %s, left %.0f s ago by a git process that did not finish", lock, age)
    try:
        lock.unlink()
    except FileNotFoundError:
        return False
    return True


_HEX = frozenset("0123456789abcdef")


def _is_full_id(value: str, length: int) -> bool:
    """Whether ``value`` is already a full object id (nothing for ``rev-parse`` to resolve)."""
    return len(value) == length and set(value) <= _HEX


def _require_commit(git: Git, rev: str, what: str, cause: BaseException | None = None) -> None:
    """Raise ``GitError("<what>: <rev> is not a commit")`` unless ``rev`` names a commit: run after
    a command given a full id failed, so bad input gets its own message (and no repair)."""
    if git.rev_parse(rev) is None:
        raise GitError(f"{what}: {rev!r} is not a commit") from cause


def _commit_id(git: Git, rev: str) -> str | None:
    """``rev`` as it is when it already is a full SHA-1 or SHA-256 id (the commands it is passed to
    refuse an id of no object), else ``rev-parse``'s answer."""
    return rev if _is_full_id(rev, 40) or _is_full_id(rev, 64) else git.rev_parse(rev)


def _check_ref_arg(value: str) -> None:
    if not value or value.startswith("-") or any(c.isspace() for c in value):
        raise GitError(f"invalid revision: {value!r}")


def create_branch(repo: Path, branch: str, commit: str) -> None:
    """Create ``refs/heads/<branch>`` at ``commit`` only if it does not exist.

    A branch already at ``commit`` is a no-op; one elsewhere raises :class:`RefMoved`.
    """
    update_ref_cas(repo, f"refs/heads/{branch}", commit, None)


def keep_ref(repo: Path, ref: str, sha: str, *, stale_lock_s: float | None = None) -> None:
    """Point ``ref`` (e.g. ``refs/autopack/candidates/<name>``) at ``sha`` so it is never
    garbage-collected. An anchor, not a pointer that others move: it is set
    unconditionally. ``stale_lock_s`` as for :func:`update_ref_cas`: a lock of this ref
    older than that is a killed git's remains, removed before one more try."""
    git = Git(repo)
    _check_ref_name(git, ref)
    _check_ref_arg(sha)
    proc = _update_ref(git, repo, ref, "autopack: keep", [sha], stale_lock_s)
    if proc.returncode != 0:
        raise GitError(f"git update-ref {ref} failed: {proc.stderr.decode('utf-8', 'replace').strip()}")


# -- writing changes ----------------------------------------------------------


# As governance's limit (edits/govern.py): no edit reaches a write with a longer path.
MAX_PATH_BYTES = 1024


def _split_repo_path(path: str) -> list[str]:
    """Validate a repository-relative path syntactically; return its components."""
    if not isinstance(path, str) or not path:
        raise UnsafePath(str(path), "empty path")
    if "\0" in path:
        raise UnsafePath(path, "contains a NUL byte")
    if "\\" in path:
        raise UnsafePath(path, "contains a backslash")
    if path.startswith("/") or os.path.isabs(path):
        raise UnsafePath(path, "is absolute")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        # Before any parent is made: a path too deep for the file system would leave its folders.
        raise UnsafePath(path, f"is longer than {MAX_PATH_BYTES} bytes")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(path, "is not a normalized relative path (empty, '.' or '..' part)")
        # '.git', and the spellings other filesystems treat as '.git' ('.GIT', '.git.').
        if part.rstrip(". ").lower() == ".git":
            raise UnsafePath(path, "is inside .git")
    return parts


def _lstat(p: Path) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _check_write_target(root: Path, path: str, parts: list[str], deleted: set[str], delete: bool) -> None:
    """Check, with lstat on every component, that ``path`` stays a plain path in ``root``."""
    current = root
    for i, part in enumerate(parts[:-1]):
        current = current / part
        prefix = "/".join(parts[: i + 1])
        st = _lstat(current)
        if st is None:
            return  # the rest will be created (or, for a delete, there is nothing)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(path, f"goes through the symlink {prefix!r}")
        if not stat.S_ISDIR(st.st_mode):
            if prefix in deleted and not delete:
                return  # that file is deleted in the same change set
            raise UnsafePath(path, f"{prefix!r} is a file, not a directory")
    st = _lstat(root / path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafePath(path, "is a directory")
    if stat.S_ISLNK(st.st_mode) and not delete:
        raise UnsafePath(path, "is a symlink; refusing to write through it")


def write_changes(worktree: Path, changes: Mapping[str, str | None]) -> None:
    """Write ``changes`` (``{path: new text}``, ``None`` = delete) into ``worktree``.

    Every path is checked before anything is written; the whole set is refused
    with :class:`UnsafePath` if one path is absolute, not normalized, contains
    ``..``, enters ``.git``, passes through an existing symlink (each parent
    component is checked with ``lstat``), is a symlink or a directory itself, or
    would resolve outside the worktree. Deletions are applied first, then writes;
    parent directories are created. Text is written as UTF-8 bytes exactly (no
    newline translation; surrogate escapes from :meth:`Git.read_blob` round-trip).
    """
    root = Path(worktree).resolve()
    if not root.is_dir():
        raise GitError(f"write_changes: {root} is not a directory")

    parsed = {path: _split_repo_path(path) for path in changes}
    deleted = {p for p, content in changes.items() if content is None}
    written = [p for p, content in changes.items() if content is not None]
    written_set = set(written)
    for path in written:
        for i in range(1, len(parsed[path])):
            prefix = "/".join(parsed[path][:i])
            if prefix in written_set:
                raise UnsafePath(path, f"conflicts with the file {prefix!r} written in the same change set")
    for path, parts in parsed.items():
        with _refused_on_os_error(path):
            _check_write_target(root, path, parts, deleted, changes[path] is None)

    for path in deleted:
        with _refused_on_os_error(path):
            target = root / path
            st = _lstat(target)
            if st is not None:
                _check_write_target(root, path, parsed[path], deleted, True)
                os.unlink(target)

    for path in written:
        with _refused_on_os_error(path):
            _write_one(root, path, parsed[path], changes[path], deleted)


@contextlib.contextmanager
def _refused_on_os_error(path: str) -> Iterator[None]:
    """An OSError while checking or writing ``path`` (a name too long for the file system, a
    parent that is not a folder…) refuses the edit instead of failing the step."""
    try:
        yield
    except UnsafePath:
        raise
    except OSError as exc:
        raise UnsafePath(path, f"cannot be written ({exc.strerror or exc})") from exc


def _write_one(root: Path, path: str, parts: list[str], content: str | None, deleted: set[str]) -> None:
    """Write one checked path, creating its parents one level at a time, never through a link."""
    assert content is not None
    _check_write_target(root, path, parts, deleted, False)
    target = root / path
    parent = target.parent
    # Create missing parents one level at a time, never following a symlink.
    current = root
    for part in parts[:-1]:
        current = current / part
        st = _lstat(current)
        if st is None:
            os.mkdir(current)
        elif not stat.S_ISDIR(st.st_mode):  # symlink or file appeared since the check
            raise UnsafePath(path, f"{current.relative_to(root)} is not a plain directory")
    real_parent = Path(os.path.realpath(parent))
    if real_parent != root and root not in real_parent.parents:
        raise UnsafePath(path, "resolves outside the worktree")
    data = content.encode("utf-8", "surrogateescape")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(path, "is a symlink; refusing to write through it") from exc
        raise
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


# -- the deterministic phase commit ------------------------------------------


def _format_message(message: str, trailers: Mapping[str, str]) -> str:
    lines = [line.rstrip() for line in message.strip().splitlines()]
    if not lines or not lines[0]:
        raise GitError("commit message must start with a non-empty subject line")
    text = "\n".join(lines)
    if trailers:
        block = []
        for key, value in trailers.items():
            if not _TRAILER_KEY.match(key):
                raise GitError(f"invalid trailer key {key!r}")
            value = str(value)
            if "\n" in value or "\r" in value or not value.strip():
                raise GitError(f"invalid trailer value for {key!r}: {value!r}")
            block.append(f"{key}: {value.strip()}")
        text += "\n\n" + "\n".join(block)
    return text + "\n"


def commit_candidate(
    worktree: Path,
    parent: str,
    changes: Mapping[str, str | None],
    *,
    message: str,
    trailers: Mapping[str, str],
    timestamp: int,
    author_name: str = "Autopack",
    author_email: str = "autopack@localhost",
    keep_as: str | None = None,
    parent_entries: Mapping[str, str] | None = None,
    reset_first: bool = True,
) -> str:
    """Make the phase's candidate commit: ``parent`` plus ``changes``. Returns its SHA.

    The worktree is reset hard to ``parent`` and cleaned, the changes written
    (see :func:`write_changes`), and exactly the changed paths staged into a
    fresh temporary index read from ``parent``'s tree; ``write-tree`` and
    ``commit-tree -p parent`` then make the commit with author and committer
    fixed to ``author_name <author_email>`` at ``@timestamp +0000`` and the
    message followed by a blank line and ``Key: value`` trailers in the given
    order. The same inputs therefore give the same SHA, so a retry cannot apply
    a phase twice.

    No branch moves and no hook runs (``commit-tree`` runs none, and
    ``core.hooksPath`` is forced to ``/dev/null``). Afterwards the worktree's
    detached HEAD is at the candidate. With ``keep_as``, the commit is anchored
    at ``refs/autopack/candidates/<keep_as>`` so garbage collection keeps it.
    ``parent_entries`` (``{path: mode}`` of ``parent``, as :meth:`Git.list_entries` gives it) saves
    listing the parent's tree again when the caller has it. ``reset_first=False`` is for a
    caller that has just made the worktree clean at ``parent`` (:func:`ensure_worktree`).
    """
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise GitError(f"timestamp must be a non-negative integer, got {timestamp!r}")
    for value, what in ((author_name, "author name"), (author_email, "author email")):
        if not value or any(c in value for c in "<>\n\0"):
            raise GitError(f"invalid {what}: {value!r}")
    text = _format_message(message, trailers)

    root = Path(worktree).resolve()
    git = Git(root)
    parent_sha = _commit_id(git, parent)  # read-tree below refuses a full id of no object
    if parent_sha is None:
        raise GitError(f"commit_candidate: {parent!r} is not a commit")

    # Paths inside a submodule belong to another repository.
    entries = parent_entries if parent_entries is not None else git.list_entries(parent_sha)
    gitlinks = {p for p, mode in entries.items() if mode == MODE_GITLINK}
    for path in changes:
        parts = _split_repo_path(path)
        for i in range(1, len(parts) + 1):
            if "/".join(parts[:i]) in gitlinks:
                raise UnsafePath(path, f"is inside the submodule {'/'.join(parts[:i])!r}")

    if reset_first:
        _reset_clean(git, parent_sha)
    write_changes(root, changes)

    date = f"@{timestamp} +0000"
    commit_env = {
        "GIT_AUTHOR_NAME": author_name,
        "GIT_AUTHOR_EMAIL": author_email,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": author_name,
        "GIT_COMMITTER_EMAIL": author_email,
        "GIT_COMMITTER_DATE": date,
    }
    with tempfile.TemporaryDirectory(prefix="autopack-index-") as tmp:
        index_env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git.run("read-tree", parent_sha, env=index_env)
        if changes:
            # The changes are repository text (what read_blob gave the Builder, edited): they are
            # stored as written, with no line-ending conversion, working-tree-encoding or clean
            # filter, which staging the files would apply (core.safecrlf refused every edit of a
            # CRLF checkout's files, a UTF-16 working-tree-encoding every edit of such a file).
            blobs = _store_blobs(git, [p for p, content in changes.items() if content is not None])
            absent = "0" * len(parent_sha)
            info = "".join(
                f"{_blob_mode(entries.get(p))} {blobs[p]}\t{p}\0" if p in blobs else f"0 {absent}\t{p}\0" for p in changes
            )
            staged = git.run_bytes(
                "update-index", "--add", "--replace", "-z", "--index-info",
                env=index_env, input=info,
            )
            # git skips a path it finds invalid (e.g. an NTFS '.git::$INDEX_ALLOCATION' form) with
            # this line and exit 0: the commit would silently lack a change the attempt records.
            ignored = [line[len(b"Ignoring path "):] for line in staged.stderr.splitlines() if line.startswith(b"Ignoring path ")]
            if ignored:
                raise UnsafePath(ignored[0].decode("utf-8", "surrogateescape"), "is a path git refuses to record")
        tree = git.run("write-tree", env=index_env).strip()
    sha = git.run(
        "commit-tree", "--no-gpg-sign", tree, "-p", parent_sha, "-F", "-",
        env=commit_env, input=text,
    ).strip()

    if keep_as is not None:
        keep_ref(root, CANDIDATE_REF_PREFIX + keep_as, sha)
    # Leave the worktree's detached HEAD (and its index) on the candidate. The files already
    # are its tree (the parent's, cleaned, plus the changes), so a mixed reset is enough;
    # HEAD is detached (``_reset_clean`` above), so no branch moves.
    git.run("reset", "--quiet", sha)
    return sha


def _blob_mode(parent_mode: str | None) -> str:
    """The mode a written file is committed with: the parent's (an executable stays one), else a
    plain file's."""
    return parent_mode if parent_mode in (MODE_FILE, MODE_EXECUTABLE) else MODE_FILE


def _store_blobs(git: Git, paths: list[str]) -> dict[str, str]:
    """Store the worktree files at ``paths`` as blobs, byte for byte (``--no-filters``): {path: id}."""
    plain = [p for p in paths if "\n" not in p]
    out = git.run("hash-object", "-w", "--no-filters", "--stdin-paths", input="".join(f"{p}\n" for p in plain)).split() if plain else []
    blobs = dict(zip(plain, out))
    for p in paths:  # a name with a newline cannot go on a --stdin-paths line
        if p not in blobs:
            blobs[p] = git.run("hash-object", "-w", "--no-filters", "--", p).strip()
    if len(blobs) != len(paths) or len(out) != len(plain):
        raise GitError(f"hash-object stored {len(out)} blobs for {len(plain)} paths")
    return blobs


# -- reading ------------------------------------------------------------------


def changed_paths(repo: Path, old: str, new: str) -> list[str]:
    """Paths that differ between commits ``old`` and ``new`` (added, modified, deleted), sorted."""
    git = Git(repo)
    _check_ref_arg(old)
    _check_ref_arg(new)
    out = git.run_bytes("diff", "--name-only", "-z", "--no-renames", old, new, "--").stdout
    return sorted({p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p})


def _outside_checkout(repo: Path, work_tree: Path, index: Path) -> tuple[Git, dict[str, str]]:
    """Git for ``repo``'s objects and refs run from ``work_tree`` as its work tree, with ``index``
    as its index: nothing of the user's checkout (its files, its ``.gitattributes``, its index) is
    read. git reads attributes from the directory it runs in even when told of another work tree,
    so it runs there, with the repository named by ``GIT_DIR``."""
    return Git(work_tree), {"GIT_DIR": _git_dir(str(Path(repo).resolve())), "GIT_WORK_TREE": str(work_tree),
                            "GIT_INDEX_FILE": str(index)}


@functools.lru_cache(maxsize=256)
def _git_dir(repo: str) -> str:
    """A repository's git folder (one git call per repository and process: it does not move)."""
    return Git(Path(repo)).run("rev-parse", "--absolute-git-dir").strip()


def diff(repo: Path, old: str, new: str, max_bytes: int = 200_000) -> str:
    """Unified diff from ``old`` to ``new`` for auditors, at most ``max_bytes`` long.

    No external diff drivers or textconv run; binary files are summarised. A
    longer diff is cut at a line boundary and ends with a ``[diff truncated …]`` note.

    git reads a diff's attributes from the working tree and the index: run in the user's checkout,
    an uncommitted ``.gitattributes`` there (``*.py -diff``) hid the change from the auditor. It
    runs against an empty work tree and index instead, so the diff depends on the commits only.
    """
    _check_ref_arg(old)
    _check_ref_arg(new)
    with tempfile.TemporaryDirectory(prefix="autopack-diff-") as tmp:
        git, env = _outside_checkout(repo, Path(tmp), Path(tmp) / "index")
        raw = git.run_bytes(
            "diff", "--no-ext-diff", "--no-textconv", "--no-color", "--find-renames",
            old, new, "--", env=env,
        ).stdout
    if len(raw) <= max_bytes:
        return raw.decode("utf-8", "replace")
    cut = raw.rfind(b"\n", 0, max_bytes)
    kept = raw[: cut + 1] if cut >= 0 else raw[:max_bytes]
    return kept.decode("utf-8", "replace") + (
        f"[diff truncated: {len(kept)} of {len(raw)} bytes shown]\n"
    )


def export_tree(repo: Path, commit: str, dest: Path) -> Path:
    """Materialise ``commit``'s files into the fresh directory ``dest``; return it.

    Uses a temporary index and ``checkout-index`` (so, unlike ``git archive``,
    ``export-ignore`` attributes do not drop files), keeping executable bits and
    symlinks. ``dest`` must be absent or empty; no ``.git`` is created in it.

    The work tree is ``dest`` itself, not the user's checkout: git applies the attributes it finds
    in the work tree when it checks files out, so an uncommitted ``.gitattributes`` there
    (``* text eol=crlf``) changed the files the tests ran on. The commit's own attributes (in the
    temporary index) apply.
    """
    git = Git(repo)
    sha = _commit_id(git, commit)  # a full id is checked by read-tree below (``^{commit}``)
    if sha is None:
        raise GitError(f"export_tree: {commit!r} is not a commit")
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise GitError(f"export_tree: {dest} exists and is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autopack-export-") as tmp:
        outside, env = _outside_checkout(repo, dest.resolve(), Path(tmp) / "index")
        try:
            outside.run("read-tree", f"{sha}^{{commit}}", env=env)
        except GitError as exc:
            _require_commit(git, sha, "export_tree", exc)
            raise
        outside.run("checkout-index", "--all", "--force", f"--prefix={dest.resolve()}/", env=env)
    return dest


def branch_log(repo: Path, base: str, branch: str) -> list[LogEntry]:
    """Commits on ``branch`` that are not on ``base``, oldest first.

    Each is ``{"sha", "subject", "trailers"}``; ``trailers`` maps each trailer key
    to its value (the last one wins when a key repeats).
    """
    _check_ref_arg(base)
    _check_ref_arg(branch)
    return Git(repo).log(f"{base}..{branch}")
