"""Real git repositories in temporary directories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def sh_git(repo: Path, *args: str, input: str | None = None) -> str:
    """Plain git, as a user would run it (used to build fixtures and to inspect results)."""
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
         "-c", "commit.gpgSign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True, input=input,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on branch ``main`` with two commits and a few kinds of entries."""
    path = tmp_path / "target"
    path.mkdir()
    sh_git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# target\n")
    (path / "src").mkdir()
    (path / "src" / "app.py").write_text("def main():\n    return 1\n")
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (path / "run.sh").chmod(0o755)
    (path / "docs").mkdir()
    (path / "docs" / "guide.md").write_text("guide\n")
    (path / "guide-link.md").symlink_to("docs/guide.md")
    (path / ".gitignore").write_text("*.log\n")
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "initial")
    (path / "src" / "util.py").write_text("X = 1\n")
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "second")
    return path


@pytest.fixture
def head(repo: Path) -> str:
    return sh_git(repo, "rev-parse", "HEAD").strip()
