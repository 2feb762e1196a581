"""Governance of parsed edits: what the Builder may touch, and how much it may destroy.

Everything here is pure. Paths are checked before anything is applied
(:func:`check_paths`); the computed changes are checked after
(:func:`check_changes`, and :func:`check_tree` against the parent commit's
entries when the policy has them); :func:`govern` runs them around
:func:`apply_edits`. A refusal goes back to the Builder in a fix round.

Protected-file decisions (:func:`default_protected`):

* test configuration anywhere in the tree (``conftest.py``, ``pytest.ini``,
  ``tox.ini``, ``setup.cfg``, ``noxfile.py``, ``.coveragerc``) and
  ``pyproject.toml`` (it holds ``[tool.pytest.ini_options]``): a Builder could
  otherwise make the gate pass by reconfiguring it. This also protects project
  metadata; a phase that must change dependencies needs an operator-supplied
  policy.
* CI definitions (``.github/``, ``.gitlab-ci.yml``, ``.gitlab/``, ``.ci/``,
  ``.circleci/``, ``Jenkinsfile``, ``.travis.yml``, ``azure-pipelines.yml``,
  ``.buildkite/``, ``.gitea/``, ``.forgejo/``, ``bitbucket-pipelines.yml``,
  ``.drone.yml``, ``.woodpecker.yml``, ``.woodpecker/``) and
  ``.pre-commit-config.yaml``: they run code outside the sandbox.
* lock files, pinned requirements and package-manager settings (``*.lock``,
  ``package-lock.json``, ``npm-shrinkwrap.json``, ``pnpm-lock.yaml``,
  ``requirements*.txt``, ``requirements/*.txt``, ``requirements*.in``,
  ``constraints*.txt``, ``go.sum``, ``.npmrc``): a model-written pin, hash,
  registry or ``--index-url`` is a supply-chain risk, and lock files are a
  tool's job, not a model's.
* ``.gitmodules``, ``.gitattributes`` and ``.lfsconfig``: repository mechanics.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import Sequence

from autopack.edits.apply import Reader, apply_edits
from autopack.edits.glob import first_match
from autopack.edits.model import DeleteFile, EditOp, UnifiedDiff, touched_paths
from autopack.errors import EditRefused

Refusal = tuple[str, str]

FORBIDDEN_MODES: dict[str, str] = {
    "120000": "symlink (mode 120000) refused: edits may only write regular files",
    "160000": "gitlink/submodule (mode 160000) refused: edits may only write regular files",
}

_TEST_CONFIG = (
    "**/conftest.py",
    "**/pytest.ini",
    "**/tox.ini",
    "**/setup.cfg",
    "**/noxfile.py",
    "**/.coveragerc",
    "**/pyproject.toml",
    "**/.pytest.ini",
    "**/pytest.toml",
    "**/.pytest.toml",
)
_CI = (
    ".github/**",
    ".gitlab-ci.yml",
    ".gitlab/**",
    ".ci/**",
    ".circleci/**",
    "**/Jenkinsfile",
    ".travis.yml",
    "azure-pipelines.yml",
    ".buildkite/**",
    ".pre-commit-config.yaml",
    ".gitea/**",
    ".forgejo/**",
    "bitbucket-pipelines.yml",
    ".drone.yml",
    ".woodpecker.yml",
    ".woodpecker/**",
)
_LOCKS = (
    "**/*.lock",
    "**/package-lock.json",
    "**/npm-shrinkwrap.json",
    "**/pnpm-lock.yaml",
    "**/requirements*.txt",
    "**/requirements/*.txt",
    "**/requirements*.in",
    "**/constraints*.txt",
    "**/go.sum",
    "**/.npmrc",
)
_REPO = (".gitmodules", "**/.gitattributes", "**/.lfsconfig")

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Longer names and paths than file systems take (NAME_MAX, and well under PATH_MAX): refused as
# edits, not left to fail as an OSError in the worktree.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


@dataclass(frozen=True)
class EditPolicy:
    """What a phase's edits may do.

    ``scope``: globs (repository-relative) a path must match to be written; an
    empty scope allows nothing. ``protected``: globs never written (matched
    case-insensitively). A change removing more than ``max_deleted_fraction`` of
    an existing file of at least ``min_lines_for_mass_check`` lines is refused.
    Deleting an existing file (including the old name of a rename) needs
    ``allow_delete``.
    """

    scope: tuple[str, ...]
    protected: tuple[str, ...] = ()
    max_deleted_fraction: float = 0.5
    max_files: int = 50
    allow_delete: bool = False
    min_lines_for_mass_check: int = 10
    # The parent commit's entries ({path: mode}, no folders), for :func:`check_tree`; None: unknown.
    tree: Mapping[str, str] | None = None


def default_protected(gating_tests: Sequence[str]) -> tuple[str, ...]:
    """The gating test files plus test configuration, CI, lock files and repo mechanics."""
    gating = tuple(_literal_glob(normalize_path(t) or t) for t in gating_tests)
    return gating + _TEST_CONFIG + _CI + _LOCKS + _REPO


def _literal_glob(path: str) -> str:
    """A glob that matches ``path`` only: its ``*``, ``?`` and ``[`` made literal (a gating test
    file may be called ``tests/test_calc[int].py``)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


# Code points HFS+ (macOS) ignores in names, as git's own check does: ".g\u200cit" is ".git" there.
_HFS_IGNORED = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")


def _is_git_dir(component: str) -> bool:
    # ".git" in any case; also forms that Windows/macOS filesystems fold to it
    # (".git.", ".git ", the 8.3 short name "git~1", invisible code points).
    # An NTFS stream name after "::" (".git::$INDEX_ALLOCATION") names the folder itself there.
    folded = _HFS_IGNORED.sub("", component).lower().split("::")[0].rstrip(". ")
    return folded == ".git" or folded == "git~1"


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe repository-relative path, or None."""
    if not path or not path.strip():
        return "empty path"
    if "\0" in path:
        return "path contains a NUL byte"
    if path.startswith(("/", "\\\\")) or _DRIVE_RE.match(path):
        return "absolute path refused: paths must be relative to the repository root"
    if "\\" in path:
        return "backslash in path refused: use forward slashes"
    if any(ord(ch) < 32 for ch in path):
        return "control character in path"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes refused"
    parts = path.split("/")
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts):
        return f"path component longer than {MAX_NAME_BYTES} bytes refused"
    if ".." in parts:
        return "'..' component refused: paths may not leave the repository"
    if any(_is_git_dir(p) for p in parts):
        return ".git component refused: the repository's own metadata may not be written"
    if not [p for p in parts if p not in ("", ".")]:
        return "empty path"
    return None


def normalize_path(path: str) -> str | None:
    """``./a//b`` → ``a/b``; None when the path is unsafe (see :func:`path_problem`)."""
    if path_problem(path) is not None:
        return None
    return "/".join(p for p in path.split("/") if p not in ("", "."))


def _check_one(path: str, policy: EditPolicy, role: str) -> str | None:
    problem = path_problem(path)
    if problem is not None:
        return problem
    norm = normalize_path(path)
    assert norm is not None
    protected = first_match(norm, policy.protected, ignore_case=True)
    if protected is not None:
        return f"{role}protected path (matches {protected!r}): it may not be changed by the Builder"
    if first_match(norm, policy.scope) is None:
        allowed = ", ".join(policy.scope) or "nothing"
        return f"{role}path outside the phase scope (allowed: {allowed})"
    return None


def check_paths(ops: Sequence[EditOp], policy: EditPolicy) -> list[Refusal]:
    """Refusals for unsafe, out-of-scope or protected paths, forbidden modes and too many files."""
    refusals: list[Refusal] = []
    seen: set[str] = set()
    for op in ops:
        checks = [(op.path, "")]
        if isinstance(op, UnifiedDiff) and op.old_path is not None:
            checks.append((op.old_path, "rename source: "))
        for path, role in checks:
            reason = _check_one(path, policy, role)
            if reason is not None:
                refusals.append((path, reason))
        if isinstance(op, UnifiedDiff) and op.mode in FORBIDDEN_MODES:
            refusals.append((op.path, FORBIDDEN_MODES[op.mode]))
        for path in touched_paths(op):
            seen.add(normalize_path(path) or path)
    if len(seen) > policy.max_files:
        refusals.append(
            ("*", f"too many files: the edits touch {len(seen)} files, more than the {policy.max_files} allowed")
        )
    return refusals


def _removed_lines(old: str, new: str) -> int:
    """Lines of ``old`` that disappear without a replacement of the same size."""
    a = old.splitlines()
    b = new.splitlines()
    removed = 0
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "delete":
            removed += i2 - i1
        elif tag == "replace":
            removed += max(0, (i2 - i1) - (j2 - j1))
    return removed


def check_changes(
    changes: dict[str, str | None], read: Reader, policy: EditPolicy
) -> list[Refusal]:
    """Refusals for file deletions, mass deletion of content and binary (NUL) content."""
    refusals: list[Refusal] = []
    for path, new in changes.items():
        old = read(path)
        if new is None:
            if old is not None and not policy.allow_delete:
                refusals.append((path, "deleting an existing file is not allowed in this phase"))
            continue
        if "\0" in new:
            refusals.append((path, "content contains a NUL byte (binary content is refused)"))
            continue
        if old is None:
            continue
        total = len(old.splitlines())
        if total < policy.min_lines_for_mass_check:
            continue
        removed = _removed_lines(old, new)
        if removed / total > policy.max_deleted_fraction:
            refusals.append(
                (
                    path,
                    f"mass deletion: the change removes {removed} of {total} lines "
                    f"({removed / total:.0%}), more than the {policy.max_deleted_fraction:.0%} allowed",
                )
            )
    return refusals


_NOT_A_FILE = {"120000": "a symlink", "160000": "a submodule"}


def check_tree(changes: Mapping[str, str | None], tree: Mapping[str, str]) -> list[Refusal]:
    """Refusals the parent commit decides (otherwise found only when the files are written, after
    the Builder's fix rounds): writing at a symlink or a submodule, at a folder, under a file, a
    symlink or a submodule, or a path that another written path needs as a folder."""
    names = sorted(tree)
    written = {p for p, content in changes.items() if content is not None}
    refusals: list[Refusal] = []
    for path, content in changes.items():
        parts = path.split("/")
        reason = None
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            mode = tree.get(prefix)
            if mode is not None and not (changes.get(prefix, "") is None and mode not in _NOT_A_FILE):
                reason = f"its parent {prefix!r} is {_NOT_A_FILE.get(mode, 'a file')} in the tree, not a folder"
            elif prefix in written:
                reason = f"conflicts with the file {prefix!r} written in the same change set"
            if reason:
                break
        if reason is None and content is not None:
            if tree.get(path) in _NOT_A_FILE:
                reason = f"is {_NOT_A_FILE[tree[path]]} in the tree: edits may only write regular files"
            else:
                i = bisect_left(names, path + "/")
                if i < len(names) and names[i].startswith(path + "/"):
                    reason = "is a folder in the tree"
        if reason:
            refusals.append((path, reason))
    return refusals


def _normalized(op: EditOp) -> EditOp:
    path = normalize_path(op.path) or op.path
    if isinstance(op, UnifiedDiff) and op.old_path is not None:
        return replace(op, path=path, old_path=normalize_path(op.old_path) or op.old_path)
    if isinstance(op, DeleteFile):
        return DeleteFile(path)
    return replace(op, path=path)


def govern(ops: Sequence[EditOp], read: Reader, policy: EditPolicy) -> dict[str, str | None]:
    """Check paths, apply in memory, check the result; return the changes or raise.

    Raises :class:`EditRefused` with every (path, reason) found, and lets
    :class:`EditApplyError` through when an edit does not match its file.
    """
    refusals = check_paths(ops, policy)
    if refusals:
        raise EditRefused(refusals)
    changes = apply_edits([_normalized(op) for op in ops], read)
    refusals = check_changes(changes, read, policy)
    if policy.tree is not None:
        refusals += check_tree(changes, policy.tree)
    if refusals:
        raise EditRefused(refusals)
    return changes
