"""A thin, safe wrapper around the ``git`` command line.

Every command runs with an environment and ``-c`` overrides chosen so that the
target repository (which Autopack does not control) and the operator's personal
git configuration cannot change what Autopack's plumbing does:

* ``GIT_*`` variables inherited from the caller are dropped (a stray ``GIT_DIR``
  or ``GIT_INDEX_FILE`` would otherwise redirect every command);
* system and global (``~/.gitconfig``) configuration are ignored, so commits do
  not pick up a user's signing, encoding or identity settings;
* ``core.hooksPath`` points at ``/dev/null``: no hook of the target (including
  ``post-checkout`` on ``worktree add`` and ``reference-transaction`` on
  ``update-ref``) ever runs; ``core.fsmonitor`` is off for the same reason;
* ``safe.directory=*`` so repositories owned by another uid still work;
* terminal prompts, pagers and colour are off.

The repository's own configuration (for example filters and eol settings) is
still honoured: it describes how the user's files are meant to be stored.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

from autopack.errors import GitError, RefMoved

__all__ = [
    "Git",
    "LogEntry",
    "RefMovedAt",
    "MODE_FILE",
    "MODE_EXECUTABLE",
    "MODE_SYMLINK",
    "MODE_GITLINK",
]

MODE_FILE = "100644"
MODE_EXECUTABLE = "100755"
MODE_SYMLINK = "120000"
MODE_GITLINK = "160000"

# Configuration that must hold whatever the target repository says.
_SAFE_CONFIG: tuple[str, ...] = (
    "safe.directory=*",
    f"core.hooksPath={os.devnull}",
    "core.fsmonitor=false",
    "core.quotePath=false",
    "core.pager=cat",
    "color.ui=false",
    "commit.gpgSign=false",
    "i18n.commitEncoding=UTF-8",
    "submodule.recurse=false",
    "advice.detachedHead=false",
    # A target whose config says its file system has no symlinks keeps a symlink's mode (120000)
    # for whatever plain file stands at its path: a Builder's edit of that file would retarget the
    # link. Every worktree here is on a file system with symlinks, which the write guard refuses.
    "core.symlinks=true",
    # Refuse paths that macOS or Windows would read as .git (git checks NTFS by default only).
    "core.protectHFS=true",
    "core.protectNTFS=true",
)
# Configuration for speed, whatever the target says: files are written by 8 parallel workers when a
# checkout (``worktree add``, ``checkout``, ``checkout-index``) writes more than git's threshold of
# 100 files. Writing files is I/O-bound: on this project's 2-core CI machine, exporting a
# 20,000-file tree took 5.6-18.6 s sequentially and 1.8-3.0 s with 8 workers (git >= 2.32;
# older versions ignore the key).
_SPEED_CONFIG: tuple[str, ...] = ("checkout.workers=8",)


class RefMovedAt(RefMoved):
    """A ref compare-and-set failed; carries the ref, what was expected and what is there.

    ``actual`` is ``None`` when the ref does not exist. Catch :class:`RefMoved`.
    """

    def __init__(self, ref: str, expected: str | None, actual: str | None) -> None:
        super().__init__(
            f"{ref} is at {actual or '(absent)'}, expected {expected or '(absent)'}"
        )
        self.ref = ref
        self.expected = expected
        self.actual = actual


class LogEntry(TypedDict):
    sha: str
    subject: str
    trailers: dict[str, str]


def is_file_mode(mode: str) -> bool:
    """Whether an entry of this mode has text to read: a file (plain or executable) or a symlink."""
    return mode.startswith("1") and mode != MODE_GITLINK


def decode_text(data: bytes) -> str:
    """A blob as text; bytes that are not UTF-8 are kept as surrogate escapes (lossless round trip)."""
    return data.decode("utf-8", "surrogateescape")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PAGER": "cat",
            "GIT_OPTIONAL_LOCKS": "0",
            # Paths are names, never globs or pathspec magic (they may come from a model).
            "GIT_LITERAL_PATHSPECS": "1",
            "LC_ALL": "C",
        }
    )
    return env


def _check_arg(value: str, what: str) -> None:
    """Refuse revisions/refs that git could read as an option or that are not one token."""
    if not value or value.startswith("-") or "\0" in value or "\n" in value:
        raise GitError(f"invalid {what}: {value!r}")


class Git:
    """Runs git commands in ``repo`` (a working tree, linked worktree or bare repository)."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)

    # -- running -------------------------------------------------------------

    def run_bytes(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``git <args>`` and return the completed process (raw bytes).

        With ``check`` a non-zero exit raises :class:`GitError` naming the command
        and git's stderr.
        """
        full_env = _base_env()
        if env:
            full_env.update(env)
        cmd = ["git"]
        for item in (*_SAFE_CONFIG, *_SPEED_CONFIG):
            cmd += ["-c", item]
        cmd += list(args)
        data = input.encode("utf-8", "surrogateescape") if isinstance(input, str) else input
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.repo,
                env=full_env,
                input=data,
                stdin=None if data is not None else subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        except FileNotFoundError as exc:  # git missing, or repo directory missing
            raise GitError(f"cannot run git {' '.join(args)} in {self.repo}: {exc}") from exc
        if check and proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace").strip()
            raise GitError(
                f"git {' '.join(args)} failed in {self.repo} (exit {proc.returncode}): {stderr}"
            )
        return proc

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
    ) -> str:
        """Run ``git <args>``; return stdout (UTF-8, undecodable bytes replaced).

        Raises :class:`GitError` with the command and stderr on a non-zero exit.
        """
        return self.run_bytes(*args, env=env, input=input).stdout.decode("utf-8", "replace")

    # -- queries -------------------------------------------------------------

    def rev_parse(self, ref: str, *, peel_commit: bool = True) -> str | None:
        """The full object id ``ref`` names, or ``None`` when it names nothing.

        By default the name is peeled to a commit (a tag gives its commit; a tree
        or blob gives ``None``).
        """
        _check_arg(ref, "revision")
        spec = f"{ref}^{{commit}}" if peel_commit else ref
        proc = self.run_bytes("rev-parse", "--verify", "--quiet", spec, check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode().strip() or None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is reachable from ``descendant`` (a commit is its own ancestor)."""
        _check_arg(ancestor, "revision")
        _check_arg(descendant, "revision")
        proc = self.run_bytes("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        if proc.returncode == 0:
            return True
        if proc.returncode == 1:
            return False
        raise GitError(
            f"git merge-base --is-ancestor {ancestor} {descendant} failed: "
            + proc.stderr.decode("utf-8", "replace").strip()
        )

    def current_branch(self) -> str | None:
        """The short name of the checked-out branch, or ``None`` when HEAD is detached."""
        proc = self.run_bytes("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode("utf-8", "surrogateescape").strip() or None

    def read_blob(self, commit: str, path: str) -> str | None:
        """The content of ``path`` at ``commit``, or ``None`` if it is not a file there.

        Bytes that are not UTF-8 are kept as surrogate escapes, so writing the text
        back with :func:`autopack.workspace.worktree.write_changes` is lossless.
        (:class:`autopack.workspace.reader.TreeReader` reads many files of one commit.)
        """
        entry = self.list_objects(commit, path).get(path)
        if entry is None or not is_file_mode(entry[0]):
            return None
        data = self.read_objects([entry[1]]).get(entry[1])
        return None if data is None else decode_text(data)

    def list_entries(self, commit: str, *paths: str) -> dict[str, str]:
        """Every non-tree entry at ``commit`` as ``{path: mode}``, recursively.

        Modes are git's: ``100644`` file, ``100755`` executable, ``120000``
        symlink, ``160000`` gitlink (submodule; not descended into). With
        ``paths``, only entries at or under those paths are listed.
        """
        return {path: mode for path, (mode, _oid) in self.list_objects(commit, *paths).items()}

    def list_objects(self, commit: str, *paths: str) -> dict[str, tuple[str, str]]:
        """Like :meth:`list_entries`, with each entry's object id: ``{path: (mode, oid)}``."""
        _check_arg(commit, "revision")
        out = self.run_bytes("ls-tree", "-r", "-z", "--full-tree", commit, "--", *paths).stdout
        entries: dict[str, tuple[str, str]] = {}
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, _type, oid = meta.decode().split(" ", 2)
            entries[raw_path.decode("utf-8", "surrogateescape")] = (mode, oid)
        return entries

    def read_objects(self, oids: list[str]) -> dict[str, bytes]:
        """The contents of the blobs ``oids`` from one ``git cat-file --batch``; ids that name
        no object are left out."""
        for oid in oids:
            _check_arg(oid, "object id")
        if not oids:
            return {}
        out = self.run_bytes("cat-file", "--batch", input="".join(f"{oid}\n" for oid in oids)).stdout
        found: dict[str, bytes] = {}
        pos = 0
        for oid in oids:
            eol = out.index(b"\n", pos)
            header = out[pos:eol].decode("utf-8", "replace").split(" ")
            pos = eol + 1
            if len(header) != 3:  # "<oid> missing" (or ambiguous)
                continue
            size = int(header[2])
            found[oid] = out[pos : pos + size]
            pos += size + 1  # the contents are followed by a newline
        return found

    def list_files(self, commit: str) -> list[str]:
        """Every path at ``commit`` (files, symlinks and gitlinks), sorted as git sorts them."""
        return list(self.list_entries(commit))

    def log(self, revision_range: str) -> list[LogEntry]:
        """Commits in ``revision_range`` (``a..b``), parents before children."""
        _check_arg(revision_range, "revision range")
        fmt = "%H%x00%s%x00%(trailers:only=true,unfold=true)%x00%x1e"
        out = self.run_bytes(
            "log", "--topo-order", "--reverse", "--no-color", f"--format={fmt}", revision_range, "--"
        ).stdout.decode("utf-8", "replace")
        entries: list[LogEntry] = []
        for record in out.split("\x1e"):
            record = record.strip("\n")
            if not record:
                continue
            sha, subject, trailer_text, _ = record.split("\x00", 3)
            trailers: dict[str, str] = {}
            for line in trailer_text.splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip():
                    trailers[key.strip()] = value.strip()
            entries.append({"sha": sha.strip(), "subject": subject, "trailers": trailers})
        return entries
