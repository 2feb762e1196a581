from __future__ import annotations

from pathlib import Path

import pytest

from autopack.workspace.git import Git
from autopack.workspace.reader import TreeReader
from tests.workspace.conftest import sh_git


@pytest.fixture
def mixed(repo: Path) -> str:
    """The fixture repository plus a non-UTF-8 file, an empty file and a submodule entry."""
    (repo / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (repo / "empty.txt").write_bytes(b"")
    sh_git(repo, "add", "latin1.txt", "empty.txt")
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    sh_git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},vendor/lib")
    sh_git(repo, "commit", "-q", "-m", "mixed")
    return sh_git(repo, "rev-parse", "HEAD").strip()


PATHS = ["README.md", "src/app.py", "run.sh", "guide-link.md", "latin1.txt", "empty.txt",
         "vendor/lib", "src", "absent.py", "src/../README.md", "docs/guide.md"]


def test_reads_what_read_blob_reads(repo: Path, mixed: str) -> None:
    git = Git(repo)
    tree = TreeReader(repo, mixed)
    expected = {p: git.read_blob(mixed, p) for p in PATHS}
    assert expected["latin1.txt"] is not None and expected["vendor/lib"] is None  # the cases are real
    assert tree.read_many(PATHS) == expected
    assert {p: tree.read(p) for p in PATHS} == expected
    assert tree.entries() == git.list_entries(mixed)
    # Non-UTF-8 bytes survive as surrogate escapes, as read_blob keeps them.
    assert tree.read("latin1.txt").encode("utf-8", "surrogateescape") == "caf\xe9\n".encode("latin-1")  # type: ignore[union-attr]


def test_many_files_cost_two_git_processes_and_are_read_once(repo: Path, mixed: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = Git.run_bytes

    def counting(self: Git, *args: str, **kwargs: object) -> object:
        calls.append(args[0])
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Git, "run_bytes", counting)
    tree = TreeReader(repo, mixed)
    tree.read_many(PATHS)
    assert calls == ["ls-tree", "cat-file"]
    tree.read_many(PATHS)
    tree.read("README.md")
    assert calls == ["ls-tree", "cat-file"]
    tree.read("src/util.py")
    assert calls == ["ls-tree", "cat-file", "cat-file"]


def test_read_objects_skips_missing_ids(repo: Path, head: str) -> None:
    git = Git(repo)
    _mode, oid = git.list_objects(head, "README.md")["README.md"]
    found = git.read_objects([oid, "f" * 40, oid])
    assert found == {oid: b"# target\n"}
    assert git.read_objects([]) == {}
