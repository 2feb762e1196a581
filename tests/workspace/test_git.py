from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autopack.errors import GitError
from autopack.workspace.git import MODE_EXECUTABLE, MODE_FILE, MODE_GITLINK, MODE_SYMLINK, Git
from tests.workspace.conftest import sh_git


def test_run_returns_stdout(repo: Path, head: str) -> None:
    assert Git(repo).run("rev-parse", "HEAD").strip() == head


def test_run_raises_git_error_with_command_and_stderr(repo: Path) -> None:
    with pytest.raises(GitError) as info:
        Git(repo).run("cat-file", "-p", "no-such-object")
    text = str(info.value)
    assert "cat-file -p no-such-object" in text
    assert "no-such-object" in text.split("):", 1)[1]  # git's stderr is included


def test_run_in_missing_directory_raises_git_error(tmp_path: Path) -> None:
    with pytest.raises(GitError):
        Git(tmp_path / "absent").run("status")


def test_inherited_git_environment_is_ignored(repo: Path, head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_DIR", "/nonexistent")
    monkeypatch.setenv("GIT_INDEX_FILE", "/nonexistent/index")
    assert Git(repo).rev_parse("HEAD") == head


def test_rev_parse(repo: Path, head: str) -> None:
    git = Git(repo)
    assert git.rev_parse("main") == head
    assert git.rev_parse("refs/heads/main") == head
    assert git.rev_parse("does-not-exist") is None
    tree = sh_git(repo, "rev-parse", "HEAD^{tree}").strip()
    assert git.rev_parse(tree) is None  # not a commit
    assert git.rev_parse(tree, peel_commit=False) == tree
    with pytest.raises(GitError):
        git.rev_parse("--all")


def test_is_ancestor(repo: Path, head: str) -> None:
    git = Git(repo)
    first = git.rev_parse("HEAD~1")
    assert first is not None
    assert git.is_ancestor(first, head)
    assert git.is_ancestor(head, head)
    assert not git.is_ancestor(head, first)
    with pytest.raises(GitError):
        git.is_ancestor("nope", head)


def test_current_branch(repo: Path, head: str) -> None:
    git = Git(repo)
    assert git.current_branch() == "main"
    sh_git(repo, "checkout", "-q", "--detach", head)
    assert git.current_branch() is None


def test_read_blob(repo: Path, head: str) -> None:
    git = Git(repo)
    assert git.read_blob(head, "src/app.py") == "def main():\n    return 1\n"
    assert git.read_blob(head, "missing.txt") is None
    assert git.read_blob(head, "src") is None  # a tree, not a file
    assert git.read_blob("HEAD~1", "src/util.py") is None


def test_read_blob_keeps_non_utf8_bytes(repo: Path) -> None:
    (repo / "latin1.txt").write_bytes(b"caf\xe9\n")
    sh_git(repo, "add", "latin1.txt")
    sh_git(repo, "commit", "-q", "-m", "latin1")
    text = Git(repo).read_blob("HEAD", "latin1.txt")
    assert text is not None
    assert text.encode("utf-8", "surrogateescape") == b"caf\xe9\n"


def test_list_entries_gives_modes(repo: Path, head: str) -> None:
    # A gitlink (submodule entry) added straight to the index.
    sh_git(repo, "update-index", "--add", "--cacheinfo", f"{MODE_GITLINK},{head},vendor/lib")
    sh_git(repo, "commit", "-q", "-m", "gitlink")
    entries = Git(repo).list_entries("HEAD")
    assert entries["src/app.py"] == MODE_FILE
    assert entries["run.sh"] == MODE_EXECUTABLE
    assert entries["guide-link.md"] == MODE_SYMLINK
    assert entries["vendor/lib"] == MODE_GITLINK
    assert Git(repo).list_files("HEAD") == list(entries)
    assert "src/util.py" in Git(repo).list_files("HEAD")
    assert "src" not in entries  # trees are descended into, not listed


def test_log_parses_trailers(repo: Path) -> None:
    sh_git(repo, "commit", "-q", "--allow-empty", "-m",
           "subject line\n\nbody text\n\nAutopack-Run: r1\nAutopack-Attempt: 3")
    entries = Git(repo).log("HEAD~1..HEAD")
    assert len(entries) == 1
    assert entries[0]["subject"] == "subject line"
    assert entries[0]["trailers"] == {"Autopack-Run": "r1", "Autopack-Attempt": "3"}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_repository_owned_by_another_uid(repo: Path, head: str, tmp_path: Path) -> None:
    for root, dirs, files in os.walk(repo):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), 65534, 65534)
    os.lchown(repo, 65534, 65534)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull})
    plain = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, env=env)
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr  # git's own guard is real
    assert Git(repo).rev_parse("HEAD") == head
