from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from autopack.errors import GitError, RefMoved, UnsafePath
from autopack.workspace import (
    CANDIDATE_REF_PREFIX,
    Git,
    RefMovedAt,
    branch_log,
    changed_paths,
    commit_candidate,
    create_branch,
    diff,
    ensure_worktree,
    export_tree,
    keep_ref,
    remove_worktree,
    update_ref_cas,
    write_changes,
)
from tests.workspace.conftest import sh_git

TS = 1_700_000_000


def all_refs(repo: Path) -> dict[str, str]:
    out = sh_git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1) for line in out.splitlines())


def candidate(wt: Path, parent: str, changes: dict[str, str | None], attempt: int = 1,
              **kwargs: object) -> str:
    return commit_candidate(
        wt, parent, changes,
        message="phase p1: add feature\n\nWhat the builder did.",
        trailers={"Autopack-Run": "run-1", "Autopack-Phase": "p1", "Autopack-Attempt": str(attempt)},
        timestamp=TS,
        **kwargs,  # type: ignore[arg-type]
    )


# -- worktrees -----------------------------------------------------------------


def test_ensure_worktree_creates_detached_checkout(repo: Path, head: str, tmp_path: Path) -> None:
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    wt = ensure_worktree(repo, tmp_path / "wt" / "run-1", first)
    git = Git(wt)
    assert git.rev_parse("HEAD") == first
    assert git.current_branch() is None
    assert (wt / "src" / "app.py").read_text() == "def main():\n    return 1\n"
    assert not (wt / "src" / "util.py").exists()
    # The user's checkout and branch are untouched.
    assert Git(repo).current_branch() == "main"
    assert Git(repo).rev_parse("main") == head


def test_ensure_worktree_resets_and_cleans_existing(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    (wt / "README.md").write_text("dirty\n")
    (wt / "untracked.txt").write_text("x")
    (wt / "debug.log").write_text("ignored")
    (wt / "newdir").mkdir()
    (wt / "newdir" / "f").write_text("x")
    sh_git(wt, "add", "untracked.txt")
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None

    again = ensure_worktree(repo, tmp_path / "wt", first)
    assert again == wt
    assert Git(wt).rev_parse("HEAD") == first
    assert (wt / "README.md").read_text() == "# target\n"
    for name in ("untracked.txt", "debug.log", "newdir", "src/util.py"):
        assert not (wt / name).exists(), name
    assert sh_git(wt, "status", "--porcelain", "--ignored") == ""


def test_ensure_worktree_without_reset_leaves_an_existing_worktree(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    (wt / "README.md").write_text("dirty\n")
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    assert ensure_worktree(repo, wt, first, reset=False) == wt
    assert (wt / "README.md").read_text() == "dirty\n"
    assert Git(wt).rev_parse("HEAD") == head
    # A missing one is still recreated, at the commit asked for.
    shutil.rmtree(wt)
    ensure_worktree(repo, wt, first, reset=False)
    assert Git(wt).rev_parse("HEAD") == first
    assert sh_git(wt, "status", "--porcelain", "--ignored") == ""


@pytest.mark.parametrize("damage", ["index.lock", "torn index"])
def test_ensure_worktree_recreates_one_a_killed_git_left_broken(repo: Path, head: str, tmp_path: Path, damage: str) -> None:
    """A git process SIGKILLed mid-write leaves its lock (or half an index): the worktree is made again."""
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    git_dir = Path(sh_git(wt, "rev-parse", "--path-format=absolute", "--git-dir").strip())
    if damage == "index.lock":
        (git_dir / "index.lock").write_bytes(b"")
    else:
        (git_dir / "index").write_bytes((git_dir / "index").read_bytes()[:40])
    (wt / "README.md").write_text("dirty\n")
    if damage == "index.lock":
        with pytest.raises(subprocess.CalledProcessError):
            sh_git(wt, "reset", "--hard", "-q", head)  # plain git is stuck on it
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    assert ensure_worktree(repo, wt, first) == wt
    assert Git(wt).rev_parse("HEAD") == first
    assert (wt / "README.md").read_text() == "# target\n"
    assert sh_git(wt, "status", "--porcelain", "--ignored") == ""
    sha = candidate(wt, first, {"src/app.py": "def main():\n    return 3\n"})
    assert Git(repo).read_blob(sha, "src/app.py") == "def main():\n    return 3\n"
    listed = [line for line in sh_git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]
    assert listed == [f"worktree {repo.resolve()}", f"worktree {wt.resolve()}"]  # the repo's own and this one, once


def test_ensure_worktree_never_moves_an_attached_branch(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sh_git(wt, "checkout", "-q", "-b", "someone-elses")
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    ensure_worktree(repo, wt, first)
    assert Git(repo).rev_parse("someone-elses") == head
    assert Git(wt).current_branch() is None


def test_worktree_recreated_after_rm_rf(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    shutil.rmtree(wt)
    wt2 = ensure_worktree(repo, tmp_path / "wt", head)
    assert wt2 == wt
    assert Git(wt).rev_parse("HEAD") == head
    assert (wt / "src" / "util.py").exists()
    listed = sh_git(repo, "worktree", "list", "--porcelain")
    assert listed.count(f"worktree {wt}") == 1


def test_worktree_recreated_after_registration_pruned(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    gitdir = (wt / ".git").read_text().split(":", 1)[1].strip()
    shutil.rmtree(gitdir)  # the repo forgot the worktree; the directory remains
    ensure_worktree(repo, wt, head)
    assert Git(wt).rev_parse("HEAD") == head


def test_ensure_worktree_refuses_foreign_directory(repo: Path, head: str, tmp_path: Path) -> None:
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    with pytest.raises(GitError):
        ensure_worktree(repo, foreign, head)
    assert (foreign / "data.txt").read_text() == "keep me"


def test_ensure_worktree_unknown_commit(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(GitError):
        ensure_worktree(repo, tmp_path / "wt", "0" * 40)


def test_ensure_worktree_refuses_a_full_id_of_no_commit_and_keeps_the_worktree(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    (wt / "note.txt").write_text("untracked\n")
    tree = Git(repo).run("rev-parse", f"{head}^{{tree}}").strip()
    for bad in ("0" * 40, tree):  # a full id of no object, and of an object that is not a commit
        with pytest.raises(GitError, match="is not a commit"):
            ensure_worktree(repo, wt, bad)
    # Bad input is not a broken worktree: it was neither reset nor recreated.
    assert (wt / "note.txt").read_text() == "untracked\n" and Git(wt).rev_parse("HEAD") == head
    with pytest.raises(GitError, match="is not a commit"):
        ensure_worktree(repo, tmp_path / "fresh", tree)
    assert not (tmp_path / "fresh").exists()


def test_worktrees_are_told_apart_by_their_git_files(repo: Path, head: str, tmp_path: Path) -> None:
    from autopack.workspace.worktree import _classify, _is_linked_layout

    wt = ensure_worktree(repo, tmp_path / "wt", head)
    assert _is_linked_layout(repo, wt) and _classify(repo, wt) == "linked"
    assert not _is_linked_layout(repo, repo) and _classify(repo, repo) == "main"
    assert not _is_linked_layout(repo, wt / "src") and _classify(repo, wt / "src") is None  # inside, not the top
    # A worktree of another repository is not one of ``repo``'s.
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    other_wt = ensure_worktree(other, tmp_path / "other-wt", head)
    assert not _is_linked_layout(repo, other_wt) and _classify(repo, other_wt) is None
    with pytest.raises(GitError, match="not a worktree"):
        ensure_worktree(repo, other_wt, head)
    # A copy of a worktree's folder points at the original's registration, which points back elsewhere.
    copy = tmp_path / "copy"
    shutil.copytree(wt, copy)
    assert not _is_linked_layout(repo, copy)
    # A registration whose gitdir file is gone (half pruned): git itself is asked.
    (repo / ".git" / "worktrees" / "wt" / "gitdir").unlink()
    assert not _is_linked_layout(repo, wt)


def test_remove_worktree_is_idempotent(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    (wt / "dirty").write_text("x")
    remove_worktree(repo, wt)
    assert not wt.exists()
    assert str(wt) not in sh_git(repo, "worktree", "list")
    remove_worktree(repo, wt)


# -- refs --------------------------------------------------------------------------


def test_update_ref_cas_moves_ref(repo: Path, head: str) -> None:
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    create_branch(repo, "autopack/run-1", first)
    update_ref_cas(repo, "refs/heads/autopack/run-1", head, first)
    assert Git(repo).rev_parse("refs/heads/autopack/run-1") == head


def test_update_ref_cas_stale_expected_raises_and_leaves_ref(repo: Path, head: str) -> None:
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    create_branch(repo, "autopack/run-1", head)
    with pytest.raises(RefMoved) as info:
        update_ref_cas(repo, "refs/heads/autopack/run-1", first, first)
    assert isinstance(info.value, RefMovedAt)
    assert info.value.actual == head
    assert info.value.expected == first
    assert Git(repo).rev_parse("refs/heads/autopack/run-1") == head


def test_update_ref_cas_idempotent_retry(repo: Path, head: str) -> None:
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    create_branch(repo, "autopack/run-1", first)
    update_ref_cas(repo, "refs/heads/autopack/run-1", head, first)
    reflog_before = sh_git(repo, "reflog", "show", "refs/heads/autopack/run-1")
    # The same move again (a worker retrying after a crash) succeeds and changes nothing.
    update_ref_cas(repo, "refs/heads/autopack/run-1", head, first)
    assert Git(repo).rev_parse("refs/heads/autopack/run-1") == head
    assert sh_git(repo, "reflog", "show", "refs/heads/autopack/run-1") == reflog_before


def test_update_ref_cas_expected_absent(repo: Path, head: str) -> None:
    update_ref_cas(repo, "refs/autopack/x", head, None)
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    with pytest.raises(RefMoved):
        update_ref_cas(repo, "refs/autopack/x", first, None)
    with pytest.raises(RefMovedAt) as info:
        update_ref_cas(repo, "refs/autopack/absent", head, first)
    assert info.value.actual is None


def test_update_ref_cas_expected_old_by_name(repo: Path, head: str) -> None:
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    create_branch(repo, "autopack/run-1", head)
    update_ref_cas(repo, "refs/heads/autopack/run-1", first, "main")  # main is at head
    assert Git(repo).rev_parse("refs/heads/autopack/run-1") == first
    with pytest.raises(RefMovedAt) as info:
        update_ref_cas(repo, "refs/heads/autopack/run-1", head, "main")
    assert info.value.expected == head and info.value.actual == first


def test_update_ref_cas_in_a_sha256_repository(tmp_path: Path) -> None:
    repo = tmp_path / "sha256"
    repo.mkdir()
    sh_git(repo, "init", "-q", "--object-format=sha256", "-b", "main")
    (repo / "f").write_text("1\n")
    sh_git(repo, "add", "f")
    sh_git(repo, "commit", "-q", "-m", "one")
    (repo / "f").write_text("2\n")
    sh_git(repo, "commit", "-q", "-am", "two")
    two = sh_git(repo, "rev-parse", "HEAD").strip()
    one = sh_git(repo, "rev-parse", "HEAD~1").strip()
    assert len(two) == 64
    create_branch(repo, "autopack/run-1", one)  # "absent" is the 64-digit zero id here
    update_ref_cas(repo, "refs/heads/autopack/run-1", two, one)
    assert Git(repo).rev_parse("autopack/run-1") == two
    with pytest.raises(RefMoved):
        create_branch(repo, "autopack/run-1", one)


def test_update_ref_cas_removes_only_a_stale_lock_of_its_ref(repo: Path, head: str) -> None:
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    create_branch(repo, "autopack/run-1", first)
    lock = repo / ".git" / "refs" / "heads" / "autopack" / "run-1.lock"
    lock.write_text("")
    # A fresh lock may belong to a live git: left alone, the move fails.
    with pytest.raises(GitError) as info:
        update_ref_cas(repo, "refs/heads/autopack/run-1", head, first, stale_lock_s=60)
    assert not isinstance(info.value, RefMoved) and lock.exists()
    old = time.time() - 120
    os.utime(lock, (old, old))
    # Without stale_lock_s nothing is removed, however old.
    with pytest.raises(GitError):
        update_ref_cas(repo, "refs/heads/autopack/run-1", head, first)
    assert lock.exists()
    update_ref_cas(repo, "refs/heads/autopack/run-1", head, first, stale_lock_s=60)
    assert Git(repo).rev_parse("refs/heads/autopack/run-1") == head and not lock.exists()


def test_update_ref_cas_rejects_bad_names_and_commits(repo: Path, head: str) -> None:
    with pytest.raises(GitError):
        update_ref_cas(repo, "main", head, None)  # would write .git/main
    with pytest.raises(GitError):
        update_ref_cas(repo, "refs/heads/bad..name", head, None)
    with pytest.raises(GitError):
        update_ref_cas(repo, "refs/heads/x", "f" * 40, None)
    with pytest.raises(GitError):
        update_ref_cas(repo, "refs/heads/x", "f" * 64, None)
    tree = Git(repo).run("rev-parse", f"{head}^{{tree}}").strip()
    with pytest.raises(GitError):  # a full id of an object that is not a commit
        update_ref_cas(repo, "refs/heads/x", tree, None)
    assert Git(repo).rev_parse("refs/heads/x") is None
    assert not (repo / ".git" / "main").exists()


def test_create_branch(repo: Path, head: str) -> None:
    create_branch(repo, "autopack/run-1", head)
    assert Git(repo).rev_parse("autopack/run-1") == head
    create_branch(repo, "autopack/run-1", head)  # same commit: no-op
    first = Git(repo).rev_parse("HEAD~1")
    assert first is not None
    with pytest.raises(RefMoved):
        create_branch(repo, "autopack/run-1", first)
    assert Git(repo).rev_parse("autopack/run-1") == head


def test_keep_ref(repo: Path, head: str) -> None:
    keep_ref(repo, CANDIDATE_REF_PREFIX + "run-1/p1/1", head)
    assert all_refs(repo)["refs/autopack/candidates/run-1/p1/1"] == head
    with pytest.raises(GitError):
        keep_ref(repo, "candidates/x", head)


def test_keep_ref_removes_only_a_stale_lock_of_its_ref(repo: Path, head: str) -> None:
    """A git killed while anchoring a candidate leaves the anchor's lock: with ``stale_lock_s``
    an old one is removed and the anchor set, so the next attempt is not lost to it."""
    ref = CANDIDATE_REF_PREFIX + "run-1/p1/1"
    lock = repo / ".git" / "refs" / "autopack" / "candidates" / "run-1" / "p1" / "1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    with pytest.raises(GitError):  # fresh: may be a live git's
        keep_ref(repo, ref, head, stale_lock_s=60)
    assert lock.exists() and ref not in all_refs(repo)
    old = time.time() - 120
    os.utime(lock, (old, old))
    with pytest.raises(GitError):  # without stale_lock_s nothing is removed
        keep_ref(repo, ref, head)
    assert lock.exists()
    keep_ref(repo, ref, head, stale_lock_s=60)
    assert all_refs(repo)[ref] == head and not lock.exists()


# -- write_changes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "a/../b", ".git/x", ".git", "sub/.git/config", ".GIT/config",
     ".git./x", "/etc/passwd", "/tmp/x", "", "a//b", "./a", "a/./b", "a\\b", "a\0b"],
)
def test_write_changes_refuses_unsafe_paths(repo: Path, head: str, tmp_path: Path, path: str) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    with pytest.raises(UnsafePath):
        write_changes(wt, {"ok.txt": "fine\n", path: "evil\n"})
    assert not (wt / "ok.txt").exists()  # the whole set is refused before writing anything
    assert sh_git(wt, "status", "--porcelain") == ""


def test_write_changes_refuses_symlinked_directory(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "escape").symlink_to(outside)
    (repo / "inner").symlink_to("src")  # even a link that stays inside
    sh_git(repo, "add", "escape", "inner")
    sh_git(repo, "commit", "-q", "-m", "links")
    head = Git(repo).rev_parse("HEAD")
    assert head is not None
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    for path in ("escape/pwned.txt", "escape/deep/pwned.txt", "inner/app.py", "inner/new.py"):
        with pytest.raises(UnsafePath, match="symlink"):
            write_changes(wt, {path: "pwned\n"})
        with pytest.raises(UnsafePath, match="symlink"):
            write_changes(wt, {path: None})
    assert list(outside.iterdir()) == []
    assert (wt / "src" / "app.py").read_text() == "def main():\n    return 1\n"


def test_write_changes_refuses_writing_through_a_symlink_file(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    with pytest.raises(UnsafePath, match="symlink"):
        write_changes(wt, {"guide-link.md": "overwritten\n"})
    assert (wt / "docs" / "guide.md").read_text() == "guide\n"
    # Deleting the link itself is fine and does not touch its target.
    write_changes(wt, {"guide-link.md": None})
    assert not os.path.lexists(wt / "guide-link.md")
    assert (wt / "docs" / "guide.md").read_text() == "guide\n"


def test_write_changes_refuses_directories_and_conflicts(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    with pytest.raises(UnsafePath, match="directory"):
        write_changes(wt, {"src": "x"})
    with pytest.raises(UnsafePath, match="is a file"):
        write_changes(wt, {"README.md/x": "x"})
    with pytest.raises(UnsafePath, match="conflicts"):
        write_changes(wt, {"new": "x", "new/inner": "y"})


def test_write_changes_refuses_a_name_the_file_system_cannot_take(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    with pytest.raises(UnsafePath, match="cannot be written"):
        write_changes(wt, {"src/" + "a" * 300 + ".py": "x = 1\n"})
    with pytest.raises(UnsafePath, match="longer than 1024 bytes"):
        write_changes(wt, {"src/" + "d/" * 2100 + "x.py": "x = 1\n"})
    assert not (wt / "src" / "d").exists()  # refused before any folder was made


def test_a_symlink_is_not_retargeted_when_the_target_says_it_has_no_symlinks(repo: Path, head: str, tmp_path: Path) -> None:
    """With core.symlinks=false git checks a link out as a plain file and keeps mode 120000 for what
    stands there: writing that file would retarget the link. Autopack's git always has symlinks."""
    sh_git(repo, "config", "core.symlinks", "false")
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    assert (wt / "guide-link.md").is_symlink()
    with pytest.raises(UnsafePath, match="symlink"):
        candidate(wt, head, {"guide-link.md": "../../../../etc/passwd"})


def test_a_path_git_will_not_record_fails_the_commit_instead_of_vanishing(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    with pytest.raises(UnsafePath, match="git refuses to record"):
        candidate(wt, head, {"src/app.py": "def main():\n    return 3\n", "src/.git::$INDEX_ALLOCATION/config": "[core]\n"})


def test_write_changes_writes_creates_and_deletes(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    write_changes(wt, {
        "src/app.py": "def main():\n    return 2\n",
        "pkg/deep/new.py": "NEW = True\r\n",
        "src/util.py": None,
        "never-existed.txt": None,
        "README.md": None,
        "README.md/now-a-dir.txt": "replaced a file by a directory\n",
    })
    assert (wt / "src" / "app.py").read_text() == "def main():\n    return 2\n"
    assert (wt / "pkg" / "deep" / "new.py").read_bytes() == b"NEW = True\r\n"
    assert not (wt / "src" / "util.py").exists()
    assert (wt / "README.md" / "now-a-dir.txt").is_file()


# -- commit_candidate ----------------------------------------------------------------


def test_commit_candidate_is_deterministic(repo: Path, head: str, tmp_path: Path) -> None:
    changes: dict[str, str | None] = {"src/app.py": "def main():\n    return 2\n", "src/util.py": None,
                                      "new/file.txt": "hello\n"}
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sha1 = candidate(wt, head, changes)
    # A retry, even from a freshly made worktree elsewhere, gives the same commit.
    wt2 = ensure_worktree(repo, tmp_path / "other" / "wt", head)
    (wt2 / "stray.txt").write_text("left over by a crashed attempt")
    sha2 = candidate(wt2, head, dict(reversed(list(changes.items()))))
    assert sha1 == sha2
    assert candidate(wt, head, changes, attempt=2) != sha1
    assert commit_candidate(wt, head, changes, message="phase p1: add feature\n\nWhat the builder did.",
                            trailers={"Autopack-Run": "run-1", "Autopack-Phase": "p1",
                                      "Autopack-Attempt": "1"},
                            timestamp=TS + 1) != sha1


def test_commit_candidate_content_and_metadata(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    (wt / "stray.txt").write_text("not part of the phase")
    sha = candidate(wt, head, {"src/app.py": "def main():\n    return 2\n", "src/util.py": None,
                               "run.sh": "#!/bin/sh\necho changed\n", "debug.log": "ignored but asked for\n"})
    git = Git(repo)
    assert git.rev_parse(f"{sha}~1") == head
    assert git.read_blob(sha, "src/app.py") == "def main():\n    return 2\n"
    assert git.read_blob(sha, "src/util.py") is None
    assert git.read_blob(sha, "debug.log") == "ignored but asked for\n"
    assert git.read_blob(sha, "stray.txt") is None
    assert git.read_blob(sha, "README.md") == "# target\n"
    entries = git.list_entries(sha)
    assert entries["run.sh"] == "100755"  # executable bit kept
    assert entries["guide-link.md"] == "120000"
    assert changed_paths(repo, head, sha) == ["debug.log", "run.sh", "src/app.py", "src/util.py"]

    raw = sh_git(repo, "cat-file", "commit", sha)
    assert f"author Autopack <autopack@localhost> {TS} +0000" in raw
    assert f"committer Autopack <autopack@localhost> {TS} +0000" in raw
    assert "gpgsig" not in raw and "encoding" not in raw
    message = raw.split("\n\n", 1)[1]
    assert message == ("phase p1: add feature\n\nWhat the builder did.\n\n"
                       "Autopack-Run: run-1\nAutopack-Phase: p1\nAutopack-Attempt: 1\n")
    # The worktree is left detached on the candidate, clean.
    assert Git(wt).rev_parse("HEAD") == sha
    assert Git(wt).current_branch() is None
    assert sh_git(wt, "status", "--porcelain") == ""


def test_commit_candidate_moves_no_branch(repo: Path, head: str, tmp_path: Path) -> None:
    create_branch(repo, "autopack/run-1", head)
    before = all_refs(repo)
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sha = candidate(wt, head, {"README.md": "changed\n"}, keep_as="run-1/p1/1")
    after = all_refs(repo)
    assert after.pop("refs/autopack/candidates/run-1/p1/1") == sha
    assert after == before
    assert Git(repo).current_branch() == "main"
    assert (repo / "README.md").read_text() == "# target\n"
    assert sh_git(repo, "status", "--porcelain") == ""


def test_commit_candidate_refuses_unsafe_and_submodule_paths(repo: Path, head: str, tmp_path: Path) -> None:
    sh_git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},vendor/lib")
    sh_git(repo, "commit", "-q", "-m", "submodule")
    parent = Git(repo).rev_parse("HEAD")
    assert parent is not None
    wt = ensure_worktree(repo, tmp_path / "wt", parent)
    for path in ("vendor/lib/evil.py", "vendor/lib", ".git/hooks/pre-commit", "../outside"):
        with pytest.raises(UnsafePath):
            candidate(wt, parent, {path: "x\n"})
        # The same with the parent's listing handed in by the caller.
        with pytest.raises(UnsafePath):
            candidate(wt, parent, {path: "x\n"}, parent_entries=Git(repo).list_entries(parent))


@pytest.mark.parametrize("name", [
    "refs/autopack/run-1/p1/1", "refs/heads/autopack/0f3a_b.c", "refs/heads/a.lock", "refs/heads/a..b",
    "refs/heads/.hidden", "refs/heads/x.", "refs/heads/a//b", "refs/heads/a/", "refs/heads/sp ace",
    "refs/heads/t~1", "refs/heads/q?", "refs/heads/at@{x}", "refs/heads/@", "refs/heads/-dash",
    "refs/heads/caf\u00e9", "refs/heads/a.lock/b", "refs/heads/ctl\x01",
])
def test_ref_names_are_judged_as_git_judges_them(repo: Path, name: str) -> None:
    from autopack.workspace.worktree import _valid_ref_name

    says = subprocess.run(["git", "check-ref-format", name], capture_output=True).returncode == 0
    assert _valid_ref_name(name) is says


def test_commit_candidate_validates_inputs(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    with pytest.raises(GitError):
        commit_candidate(wt, head, {}, message="", trailers={}, timestamp=TS)
    with pytest.raises(GitError):
        commit_candidate(wt, head, {}, message="s", trailers={"Bad Key": "v"}, timestamp=TS)
    with pytest.raises(GitError):
        commit_candidate(wt, head, {}, message="s", trailers={"K": "a\nb"}, timestamp=TS)
    with pytest.raises(GitError):
        commit_candidate(wt, head, {}, message="s", trailers={}, timestamp=-1)
    with pytest.raises(GitError):
        commit_candidate(wt, "0" * 40, {}, message="s", trailers={}, timestamp=TS)
    with pytest.raises(GitError):  # a full id of no object, with no reset to catch it first
        commit_candidate(wt, "e" * 40, {}, message="s", trailers={}, timestamp=TS, reset_first=False)
    with pytest.raises(GitError):
        commit_candidate(wt, "e" * 64, {}, message="s", trailers={}, timestamp=TS, reset_first=False)


def test_user_global_config_does_not_affect_commits(
    repo: Path, head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    expected = candidate(wt, head, {"a.txt": "a\n"})
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        "[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = /bin/false\n"
        "[i18n]\n\tcommitEncoding = ISO-8859-1\n[user]\n\tname = Someone Else\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    assert candidate(wt, head, {"a.txt": "a\n"}) == expected


HOOK_NAMES = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
              "reference-transaction", "post-index-change", "post-rewrite", "pre-auto-gc")


def _install_hooks(hooks_dir: Path, marker_dir: Path) -> None:
    hooks_dir.mkdir(parents=True, exist_ok=True)
    for name in HOOK_NAMES:
        hook = hooks_dir / name
        hook.write_text(f"#!/bin/sh\ntouch '{marker_dir}/{name}'\nexit 0\n")
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.mark.parametrize("where", ["git-dir-hooks", "core-hooksPath"])
def test_no_hook_of_the_target_runs(repo: Path, head: str, tmp_path: Path, where: str) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    if where == "git-dir-hooks":
        _install_hooks(repo / ".git" / "hooks", markers)
    else:
        _install_hooks(tmp_path / "evil-hooks", markers)
        sh_git(repo, "config", "core.hooksPath", str(tmp_path / "evil-hooks"))
    # The hooks are real: plain git runs them.
    sh_git(repo, "commit", "-q", "--allow-empty", "-m", "sanity")
    assert (markers / "pre-commit").exists()
    for marker in markers.iterdir():
        marker.unlink()
    base = Git(repo).rev_parse("HEAD")
    assert base is not None

    wt = ensure_worktree(repo, tmp_path / "wt", base)
    create_branch(repo, "autopack/run-1", base)
    sha = candidate(wt, base, {"src/app.py": "changed\n"}, keep_as="run-1/p1/1")
    update_ref_cas(repo, "refs/heads/autopack/run-1", sha, base)
    ensure_worktree(repo, wt, sha)
    export_tree(repo, sha, tmp_path / "export")
    remove_worktree(repo, wt)
    assert sorted(p.name for p in markers.iterdir()) == []


# -- reading -----------------------------------------------------------------------


def test_changed_paths_and_diff(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sha = candidate(wt, head, {"src/app.py": "def main():\n    return 2\n", "docs/guide.md": None})
    assert changed_paths(repo, head, sha) == ["docs/guide.md", "src/app.py"]
    text = diff(repo, head, sha)
    assert "--- a/src/app.py" in text and "+++ b/src/app.py" in text
    assert "-    return 1" in text and "+    return 2" in text
    assert "deleted file mode" in text
    assert "truncated" not in text


def test_diff_truncates(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    big = "".join(f"line {i}\n" for i in range(5000))
    sha = candidate(wt, head, {"big.txt": big})
    text = diff(repo, head, sha, max_bytes=1000)
    assert len(text) < 1100
    body, note = text.rsplit("\n[diff truncated", 1)
    assert body.endswith("+line " + body.rsplit("+line ", 1)[1])  # cut on a line boundary
    assert note.startswith(": ") and "bytes shown]" in note


def test_export_tree(repo: Path, head: str, tmp_path: Path) -> None:
    (repo / ".gitattributes").write_text("docs/ export-ignore\n")
    sh_git(repo, "add", ".gitattributes")
    sh_git(repo, "commit", "-q", "-m", "attrs")
    commit = Git(repo).rev_parse("HEAD")
    assert commit is not None
    dest = export_tree(repo, commit, tmp_path / "sandbox" / "copy")
    assert dest == tmp_path / "sandbox" / "copy"
    assert not (dest / ".git").exists()
    assert (dest / "src" / "util.py").read_text() == "X = 1\n"
    assert (dest / "docs" / "guide.md").read_text() == "guide\n"  # export-ignore does not drop tests/docs
    assert os.access(dest / "run.sh", os.X_OK)
    assert (dest / "guide-link.md").is_symlink()
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert files == sorted(Git(repo).list_files(commit))
    # The repository and its checkout are untouched.
    assert sh_git(repo, "status", "--porcelain") == ""
    with pytest.raises(GitError):
        export_tree(repo, commit, dest)  # not fresh
    tree = Git(repo).run("rev-parse", f"{commit}^{{tree}}").strip()
    for bad in ("0" * 40, tree):
        with pytest.raises(GitError, match="is not a commit"):
            export_tree(repo, bad, tmp_path / "bad")


def test_export_tree_of_candidate_from_worktree(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sha = candidate(wt, head, {"src/app.py": "changed\n"})
    dest = export_tree(wt, sha, tmp_path / "copy")
    assert (dest / "src" / "app.py").read_text() == "changed\n"
    assert not (dest / ".git").exists()


def test_branch_log_full_flow(repo: Path, head: str, tmp_path: Path) -> None:
    branch = "refs/heads/autopack/run-1"
    create_branch(repo, "autopack/run-1", head)
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    tip = head
    for phase in ("p1", "p2", "p3"):
        sha = commit_candidate(
            wt, tip, {f"{phase}.txt": f"{phase}\n"},
            message=f"phase {phase}",
            trailers={"Autopack-Run": "run-1", "Autopack-Phase": phase, "Autopack-Attempt": "1"},
            timestamp=TS,  # same timestamp for every phase: order must still be right
        )
        update_ref_cas(repo, branch, sha, tip)
        tip = sha
    log = branch_log(repo, "main", "autopack/run-1")
    assert [e["subject"] for e in log] == ["phase p1", "phase p2", "phase p3"]
    assert [e["trailers"]["Autopack-Phase"] for e in log] == ["p1", "p2", "p3"]
    assert log[0]["trailers"] == {"Autopack-Run": "run-1", "Autopack-Phase": "p1", "Autopack-Attempt": "1"}
    assert log[-1]["sha"] == tip
    assert Git(repo).rev_parse("main") == head
    assert branch_log(repo, "autopack/run-1", "main") == []


def test_ensure_worktree_refuses_the_users_checkout(repo: Path, head: str) -> None:
    (repo / "work-in-progress.txt").write_text("uncommitted user work")
    with pytest.raises(GitError, match="own checkout"):
        ensure_worktree(repo, repo, head)
    remove_worktree(repo, repo)  # never removes the main checkout
    assert (repo / "work-in-progress.txt").exists()
    assert Git(repo).current_branch() == "main"


def test_glob_like_paths_are_literal(repo: Path, head: str, tmp_path: Path) -> None:
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sha = candidate(wt, head, {"src/*.py": "odd name\n", ":(glob)x": "magic?\n"})
    assert changed_paths(repo, head, sha) == [":(glob)x", "src/*.py"]
    assert Git(repo).read_blob(sha, "src/*.py") == "odd name\n"
    assert Git(repo).read_blob(sha, "src/app.py") == "def main():\n    return 1\n"
    assert Git(repo).read_blob(head, "src/*.py") is None


def test_worktrees_of_one_repository_made_and_removed_concurrently_all_succeed(repo: Path, head: str, tmp_path: Path) -> None:
    """Runs started together on one repository each add a worktree (and prune stale ones); a prune
    racing another process's add used to delete that worktree's half-made administrative folder
    ("could not open .git/worktrees/<id>/gitdir", "failed to read .../commondir"), failing the run's
    setup. Worktree administration is serialized per repository."""
    import threading

    from autopack.workspace import remove_worktree

    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def one(i: int) -> None:
        try:
            start.wait()
            for round_ in range(4):
                path = ensure_worktree(repo, tmp_path / "wts" / f"run-{i}-{round_}", head)
                assert (path / "README.md").exists()
                if round_ % 2:
                    remove_worktree(repo, path)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = sh_git(repo, "worktree", "list", "--porcelain")
    kept = sorted(str((tmp_path / "wts" / f"run-{i}-{r}").resolve()) for i in range(8) for r in (0, 2))
    assert sorted(line.split(" ", 1)[1] for line in listed.splitlines() if line.startswith("worktree ")
                  if line.split(" ", 1)[1] != str(repo.resolve())) == kept


def test_a_large_tree_is_written_by_parallel_checkout_workers(repo: Path, head: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Exporting (a probe's tree) or checking out more than git's threshold of 100 files starts
    ``checkout--worker`` processes: writing files is I/O-bound, and a 20,000-file tree took
    5.6-18.6 s sequentially on a 2-core machine, 1.8-3.0 s with 8 workers."""
    wt = ensure_worktree(repo, tmp_path / "wt", head)
    sha = candidate(wt, head, {f"many/f{i}.txt": f"{i}\n" for i in range(300)})
    # A git in front of the real one that records git's own trace of the processes it starts.
    real_git = shutil.which("git")
    assert real_git is not None
    bin_dir, trace = tmp_path / "bin", tmp_path / "trace.json"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\nGIT_TRACE2_EVENT="{trace}" exec "{real_git}" "$@"\n')
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    dest = export_tree(repo, sha, tmp_path / "export")
    assert sorted(p.name for p in (dest / "many").iterdir()) == sorted(f"f{i}.txt" for i in range(300))
    assert (dest / "many" / "f299.txt").read_text() == "299\n"
    workers = [line for line in trace.read_text().splitlines() if '"event":"child_start"' in line and "checkout--worker" in line]
    assert len(workers) > 1, "the export ran sequentially"


# --------------------------------------------------------------------------- what a review found


def _admin(path: Path) -> Path:
    return Path(sh_git(path, "rev-parse", "--path-format=absolute", "--git-dir").strip())


def test_a_worktree_a_killed_add_left_locked_is_recreated_and_removed(repo: Path, head: str, tmp_path: Path) -> None:
    """A worker SIGKILLed while `git worktree add` checks files out leaves the registration locked
    ('initializing') with an index.lock: the reset fails, the folder goes, prune skips a locked entry,
    and `worktree add --force` refused it on every later delivery."""
    path = tmp_path / "worktrees" / "run1"
    ensure_worktree(repo, path, head)
    admin = _admin(path)
    (admin / "locked").write_text("initializing")
    (admin / "index.lock").write_text("")
    assert ensure_worktree(repo, path, head) == path.resolve()
    assert sh_git(path, "rev-parse", "HEAD").strip() == head and (path / "src" / "app.py").is_file()
    # Cleanup of a worktree whose folder is gone and whose registration is locked removes it too.
    (_admin(path) / "locked").write_text("initializing")
    shutil.rmtree(path)
    remove_worktree(repo, path)
    assert str(path) not in sh_git(repo, "worktree", "list", "--porcelain")


def test_the_exported_tree_does_not_depend_on_the_users_uncommitted_files(repo: Path, head: str, tmp_path: Path) -> None:
    first = export_tree(repo, head, tmp_path / "ex1")
    (repo / "src" / ".gitattributes").write_text("* text eol=crlf\n")  # the user's own, not committed
    second = export_tree(repo, head, tmp_path / "ex2")
    assert (second / "src" / "app.py").read_bytes() == (first / "src" / "app.py").read_bytes() == b"def main():\n    return 1\n"


def test_the_auditors_diff_does_not_depend_on_the_users_uncommitted_files(repo: Path, head: str, tmp_path: Path) -> None:
    path = tmp_path / "wt"
    ensure_worktree(repo, path, head)
    sha = commit_candidate(path, head, {"src/app.py": "def main():\n    return 2\n"}, message="m", trailers={}, timestamp=1)
    before = diff(repo, head, sha)
    (repo / ".gitattributes").write_text("*.py -diff\n")  # the user's own, not committed
    sh_git(repo, "add", ".gitattributes")  # even staged in the user's index
    assert "+    return 2" in before and diff(repo, head, sha) == before


def _crlf_repo(tmp_path: Path, config: dict[str, str], attributes: str | None) -> tuple[Path, str]:
    repo = tmp_path / "crlf"
    repo.mkdir()
    sh_git(repo, "init", "-q", "-b", "main")
    for key, value in config.items():
        sh_git(repo, "config", key, value)
    if attributes:
        (repo / ".gitattributes").write_text(attributes)
    (repo / "app.py").write_bytes(b"x = 1\r\n")
    (repo / "run.sh").write_bytes(b"echo hi\r\n")
    os.chmod(repo / "run.sh", 0o755)
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-qm", "i")
    return repo, sh_git(repo, "rev-parse", "HEAD").strip()


@pytest.mark.parametrize("config, attributes", [
    ({"core.autocrlf": "true", "core.safecrlf": "true"}, None),
    ({"core.safecrlf": "true"}, "*.py text eol=crlf\n*.sh text eol=crlf\n"),
])
def test_an_edit_in_a_crlf_checkout_with_safecrlf_is_committed_as_written(tmp_path: Path, config: dict[str, str],
                                                                         attributes: str | None) -> None:
    """The Builder edits repository text (LF); staging it as a checkout's file ran git's line-ending
    conversion, and core.safecrlf refused every edit ('LF would be replaced by CRLF')."""
    repo, head = _crlf_repo(tmp_path, config, attributes)
    text = Git(repo).read_blob(head, "app.py")
    assert text == "x = 1\n"
    path = tmp_path / "wt"
    ensure_worktree(repo, path, head)
    sha = commit_candidate(path, head, {"app.py": text + "y = 2\n", "run.sh": "echo bye\n", "new.py": "z = 3\n"},
                           message="m", trailers={}, timestamp=1)
    assert Git(repo).read_blob(sha, "app.py") == "x = 1\ny = 2\n" and Git(repo).read_blob(sha, "new.py") == "z = 3\n"
    modes = {line.split()[3]: line.split()[0] for line in sh_git(repo, "ls-tree", "-r", sha).splitlines()}
    assert modes["run.sh"] == "100755" and modes["new.py"] == "100644"  # an executable stays one


def test_an_edit_of_a_file_with_a_working_tree_encoding_is_committed_as_written(tmp_path: Path) -> None:
    repo = tmp_path / "enc"
    repo.mkdir()
    sh_git(repo, "init", "-q", "-b", "main")
    (repo / ".gitattributes").write_text("*.ps1 text working-tree-encoding=UTF-16LE-BOM eol=crlf\n")
    (repo / "s.ps1").write_bytes("\ufeffWrite-Host hi\r\n".encode("utf-16-le"))
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-qm", "i")
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    assert Git(repo).read_blob(head, "s.ps1") == "Write-Host hi\n"
    path = tmp_path / "wt"
    ensure_worktree(repo, path, head)
    sha = commit_candidate(path, head, {"s.ps1": "Write-Host bye\n"}, message="m", trailers={}, timestamp=1)
    assert Git(repo).read_blob(sha, "s.ps1") == "Write-Host bye\n"


def test_a_name_with_a_newline_and_a_deletion_are_committed(repo: Path, head: str, tmp_path: Path) -> None:
    path = tmp_path / "wt"
    ensure_worktree(repo, path, head)
    sha = commit_candidate(path, head, {"odd\nname.txt": "one\n", "src/app.py": None}, message="m", trailers={}, timestamp=1)
    assert Git(repo).read_blob(sha, "odd\nname.txt") == "one\n" and "src/app.py" not in Git(repo).list_entries(sha)
