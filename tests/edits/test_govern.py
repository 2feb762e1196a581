from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from autopack.edits.glob import glob_match
from autopack.edits.govern import (
    EditPolicy,
    check_changes,
    check_paths,
    default_protected,
    govern,
    normalize_path,
)
from autopack.edits.model import (
    DeleteFile,
    EditOp,
    Hunk,
    HunkLine,
    SearchReplace,
    UnifiedDiff,
    WholeFile,
)
from autopack.edits.parse import parse_edits
from autopack.errors import EditRefused

GATE = "tests/test_gate.py"
POLICY = EditPolicy(scope=("src/**", "tests/**", "docs/**"), protected=default_protected([GATE]))

BIG = "".join(f"value_{k} = {k}\n" for k in range(40))
FILES: dict[str, str] = {
    "src/big.py": BIG,
    "src/small.py": "a = 1\nb = 2\n",
    "lib/x.py": "x = 1\n",
    GATE: "def test_gate():\n    assert True\n",
}


def write(path: str, content: str = "x = 1\n") -> list[EditOp]:
    return [WholeFile(path, content)]


def answer(text: str) -> list[EditOp]:
    return parse_edits(text)


@dataclass(frozen=True)
class Case:
    name: str
    ops: list[EditOp]
    path: str
    fragment: str


def _mass_sr() -> list[EditOp]:
    search = "".join(f"value_{k} = {k}\n" for k in range(5, 35))
    return [SearchReplace("src/big.py", search, "pass\n")]


HOSTILE: list[Case] = [
    Case("parent traversal", write("../etc/passwd"), "../etc/passwd", "'..'"),
    Case("nested traversal", write("a/../../x"), "a/../../x", "'..'"),
    Case("traversal after dot", write("src/./../../x"), "src/./../../x", "'..'"),
    Case("git hook", write(".git/hooks/pre-commit"), ".git/hooks/pre-commit", ".git"),
    Case("git upper case", write(".GIT/config"), ".GIT/config", ".git"),
    Case("git nested mixed case", write("src/.Git/x"), "src/.Git/x", ".git"),
    Case("git via dot prefix", write("./.git/config"), "./.git/config", ".git"),
    Case("git with trailing dot", write(".git./config"), ".git./config", ".git"),
    Case("posix absolute", write("/etc/passwd"), "/etc/passwd", "absolute"),
    Case("windows drive", write("C:\\x"), "C:\\x", "absolute"),
    Case("windows drive forward slash", write("c:/x"), "c:/x", "absolute"),
    Case("unc path", write("\\\\server\\share\\x"), "\\\\server\\share\\x", "absolute"),
    Case(
        "symlink creation",
        answer(
            "diff --git a/src/link b/src/link\nnew file mode 120000\n--- /dev/null\n+++ b/src/link\n"
            "@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n"
        ),
        "src/link",
        "symlink",
    ),
    Case(
        "symlink by mode change",
        answer("diff --git a/src/small.py b/src/small.py\nold mode 100644\nnew mode 120000\n"),
        "src/small.py",
        "symlink",
    ),
    Case(
        "gitlink",
        answer("diff --git a/src/sub b/src/sub\nnew file mode 160000\n--- /dev/null\n+++ b/src/sub\n@@ -0,0 +1 @@\n+Subproject commit 1234\n"),
        "src/sub",
        "gitlink",
    ),
    Case("gating test", answer(f"{GATE}\n<<<<<<< SEARCH\n    assert True\n=======\n    pass\n>>>>>>> REPLACE\n"), GATE, "protected"),
    Case("gating test other case", write("TESTS/Test_Gate.py"), "TESTS/Test_Gate.py", "protected"),
    Case("root conftest", write("conftest.py"), "conftest.py", "protected"),
    Case("tests conftest", write("tests/conftest.py"), "tests/conftest.py", "protected"),
    Case("pytest.ini", write("pytest.ini"), "pytest.ini", "protected"),
    Case("pyproject", write("pyproject.toml"), "pyproject.toml", "protected"),
    Case("setup.cfg", write("setup.cfg"), "setup.cfg", "protected"),
    Case("tox.ini in scope", write("src/tox.ini"), "src/tox.ini", "protected"),
    Case("github workflow", write(".github/workflows/ci.yml"), ".github/workflows/ci.yml", "protected"),
    Case("gitlab ci", write(".gitlab-ci.yml"), ".gitlab-ci.yml", "protected"),
    Case("poetry lock", write("poetry.lock"), "poetry.lock", "protected"),
    Case("package-lock", write("src/web/package-lock.json"), "src/web/package-lock.json", "protected"),
    Case("requirements", write("requirements-dev.txt"), "requirements-dev.txt", "protected"),
    Case("outside scope", write("lib/x.py"), "lib/x.py", "outside the phase scope"),
    Case("scope prefix trick", write("srcx/evil.py"), "srcx/evil.py", "outside the phase scope"),
    Case("mass deletion via search/replace", _mass_sr(), "src/big.py", "mass deletion"),
    Case("whole file shrinks 40 lines to 2", write("src/big.py", "value_0 = 0\nvalue_1 = 1\n"), "src/big.py", "mass deletion"),
    Case("delete existing file", [DeleteFile("src/small.py")], "src/small.py", "deleting an existing file"),
    Case(
        "diff deletes a file",
        answer("diff --git a/src/big.py b/src/big.py\ndeleted file mode 100644\n--- a/src/big.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-value_0 = 0\n-value_1 = 1\n"),
        "src/big.py",
        "deleting an existing file",
    ),
    Case("nul in path", write("src/a\0.py"), "src/a\0.py", "NUL"),
    Case("backslash path", write("src\\evil.py"), "src\\evil.py", "backslash"),
    Case("empty path", [SearchReplace("", "", "x\n")], "", "empty path"),
    Case("only dots", write("./"), "./", "empty path"),
    Case(
        "rename from outside scope",
        answer("diff --git a/lib/x.py b/src/x.py\nsimilarity index 100%\nrename from lib/x.py\nrename to src/x.py\n"),
        "lib/x.py",
        "rename source: path outside the phase scope",
    ),
    Case(
        "rename of the gating test",
        [UnifiedDiff("src/moved.py", (), old_path=GATE)],
        GATE,
        "rename source: protected",
    ),
    Case("nul content", write("src/new.bin", "a\0b\n"), "src/new.bin", "NUL byte"),
    Case("too many files", [WholeFile(f"src/f{k}.py", "x\n") for k in range(51)], "*", "too many files"),
    Case("name longer than a file system takes", write("src/" + "a" * 300 + ".py"), "src/" + "a" * 300 + ".py", "component longer than 255"),
    Case("path deeper than a file system takes", write("src/" + "d/" * 600 + "x.py"), "src/" + "d/" * 600 + "x.py", "longer than 1024"),
    Case("git with an invisible code point", write(".g\u200cit/hooks/post-checkout"), ".g\u200cit/hooks/post-checkout", ".git"),
    Case("git as an NTFS stream", write("src/.git::$INDEX_ALLOCATION/config"), "src/.git::$INDEX_ALLOCATION/config", ".git"),
    Case("git with a byte-order mark", write("src/\ufeff.git/config"), "src/\ufeff.git/config", ".git"),
    Case("gitea workflow", write(".gitea/workflows/ci.yml"), ".gitea/workflows/ci.yml", "protected"),
    Case("forgejo workflow", write(".forgejo/workflows/ci.yml"), ".forgejo/workflows/ci.yml", "protected"),
    Case("bitbucket pipelines", write("bitbucket-pipelines.yml"), "bitbucket-pipelines.yml", "protected"),
    Case("drone", write(".drone.yml"), ".drone.yml", "protected"),
    Case("woodpecker", write(".woodpecker/test.yml"), ".woodpecker/test.yml", "protected"),
    Case("requirements folder", write("requirements/base.txt"), "requirements/base.txt", "protected"),
    Case("pip-tools input", write("src/requirements-dev.in"), "src/requirements-dev.in", "protected"),
    Case("go.sum", write("src/go.sum"), "src/go.sum", "protected"),
    Case("npmrc", write("src/web/.npmrc"), "src/web/.npmrc", "protected"),
    Case("lfsconfig", write(".lfsconfig"), ".lfsconfig", "protected"),
    Case("dotted pytest.ini", write("tests/.pytest.ini"), "tests/.pytest.ini", "protected"),
    Case("pytest.toml", write("pytest.toml"), "pytest.toml", "protected"),
    Case("dotted pytest.toml", write("src/.pytest.toml"), "src/.pytest.toml", "protected"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_edit_is_refused(case: Case) -> None:
    with pytest.raises(EditRefused) as info:
        govern(case.ops, FILES.get, POLICY)
    reasons = info.value.reasons
    assert any(path == case.path and case.fragment in reason for path, reason in reasons), reasons
    assert case.fragment in str(info.value)


def test_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 25


@pytest.mark.parametrize(
    "case", [c for c in HOSTILE if c.fragment not in ("mass deletion", "deleting an existing file", "NUL byte")]
)
def test_path_refusals_happen_before_anything_is_read(case: Case) -> None:
    def read(path: str) -> str | None:
        raise AssertionError(f"read({path!r}) called before paths were checked")

    with pytest.raises(EditRefused):
        govern(case.ops, read, POLICY)


def test_legitimate_edits_pass() -> None:
    ops = parse_edits(
        """Here is the change.

./src/small.py
```python
<<<<<<< SEARCH
b = 2
=======
b = 3
>>>>>>> REPLACE
```

```diff
--- a/src/big.py
+++ b/src/big.py
@@ -3,2 +3,3 @@
 value_2 = 2
+value_2b = 2.5
 value_3 = 3
```

=== FILE: tests/test_new.py ===
```python
def test_new():
    assert 1
```
"""
    )
    changes = govern(ops, FILES.get, POLICY)
    assert changes["src/small.py"] == "a = 1\nb = 3\n"
    assert "value_2b = 2.5\nvalue_3 = 3\n" in changes["src/big.py"]  # type: ignore[operator]
    assert changes["tests/test_new.py"] == "def test_new():\n    assert 1\n"
    assert set(changes) == {"src/small.py", "src/big.py", "tests/test_new.py"}


def test_rewrite_of_same_size_and_small_files_are_not_mass_deletion() -> None:
    rewritten = "".join(f"renamed_{k} = {k}\n" for k in range(40))
    changes = govern(
        [WholeFile("src/big.py", rewritten), WholeFile("src/small.py", "")], FILES.get, POLICY
    )
    assert changes == {"src/big.py": rewritten, "src/small.py": ""}


def test_deleting_half_is_allowed_at_the_threshold() -> None:
    half = "".join(f"value_{k} = {k}\n" for k in range(20))
    assert govern(write("src/big.py", half), FILES.get, POLICY) == {"src/big.py": half}
    strict = replace(POLICY, max_deleted_fraction=0.25)
    with pytest.raises(EditRefused, match="20 of 40 lines"):
        govern(write("src/big.py", half), FILES.get, strict)


def test_delete_allowed_by_policy() -> None:
    policy = replace(POLICY, allow_delete=True)
    assert govern([DeleteFile("src/small.py")], FILES.get, policy) == {"src/small.py": None}


def test_fifty_files_is_within_limit() -> None:
    ops: list[EditOp] = [WholeFile(f"src/f{k}.py", "x\n") for k in range(50)]
    assert len(govern(ops, FILES.get, POLICY)) == 50


def test_empty_scope_allows_nothing() -> None:
    refusals = check_paths(write("src/a.py"), EditPolicy(scope=()))
    assert refusals == [("src/a.py", "path outside the phase scope (allowed: nothing)")]


def test_check_paths_collects_every_refusal() -> None:
    ops = write("../x") + write(".git/config") + write("src/ok.py")
    assert [p for p, _ in check_paths(ops, POLICY)] == ["../x", ".git/config"]


def test_check_changes_direct() -> None:
    changes: dict[str, str | None] = {"src/big.py": "", "src/new.py": "fine\n", "src/small.py": None}
    reasons = dict(check_changes(changes, FILES.get, POLICY))
    assert set(reasons) == {"src/big.py", "src/small.py"}
    assert "40 of 40 lines" in reasons["src/big.py"]


def test_normalize_path() -> None:
    assert normalize_path("./src//a.py") == "src/a.py"
    assert normalize_path("src/./a.py") == "src/a.py"
    assert normalize_path("../a.py") is None
    assert normalize_path("/a.py") is None


def test_a_gating_test_named_with_glob_characters_is_protected_itself() -> None:
    gate = "tests/test_calc[int].py"
    policy = EditPolicy(scope=("tests/**",), protected=default_protected([gate, "tests/test_*?.py"]))
    with pytest.raises(EditRefused, match="protected"):
        govern(write(gate, "def test(): pass\n"), {gate: "def test(): assert 1\n"}.get, policy)
    # Its brackets are not a character class, nor the other entry's * and ? wildcards.
    for other in ("tests/test_calci.py", "tests/test_calc[int]x.py", "tests/test_ab.py"):
        assert govern(write(other), {}.get, policy) is not None


def test_default_protected_contents() -> None:
    protected = default_protected(["./tests/test_gate.py"])
    assert protected[0] == "tests/test_gate.py"
    for pattern in ("**/conftest.py", "**/pyproject.toml", ".github/**", "**/*.lock", "**/requirements*.txt"):
        assert pattern in protected


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("src/pkg/a.py", "src/pkg/**", True),
        ("src/pkg/deep/a.py", "src/pkg/**", True),
        ("src/pkga.py", "src/pkg/**", False),
        ("conftest.py", "**/conftest.py", True),
        ("a/b/conftest.py", "**/conftest.py", True),
        ("a/b/myconftest.py", "**/conftest.py", False),
        ("README.md", "README.md", True),
        ("docs/README.md", "README.md", False),
        ("src/pkg/a.py", "src/pkg", True),
        ("src/pkg/a.py", "src/pkg/", True),
        ("src/a.py", "src/*.py", True),
        ("src/b/a.py", "src/*.py", False),
        ("src/a1.py", "src/a?.py", True),
    ],
)
def test_glob(path: str, pattern: str, expected: bool) -> None:
    assert glob_match(path, pattern) is expected


def test_diff_hunk_constructed_directly_is_governed() -> None:
    op = UnifiedDiff("src/x.py", (Hunk(1, (HunkLine("+", "a"),)),), new_file=True, mode="100644")
    assert govern([op], FILES.get, POLICY) == {"src/x.py": "a\n"}


TREE = {"src/link": "120000", "src/sub": "160000", "src/app.py": "100644", "src/pkg/mod.py": "100644",
        "src/linkdir": "120000", "src/run.sh": "100755"}


@pytest.mark.parametrize(("ops", "path", "reason"), [
    (write("src/link", "../../etc/passwd"), "src/link", "is a symlink in the tree"),
    (write("src/linkdir/x.py"), "src/linkdir/x.py", "its parent 'src/linkdir' is a symlink in the tree"),
    (write("src/sub"), "src/sub", "is a submodule in the tree"),
    (write("src/sub/x.py"), "src/sub/x.py", "its parent 'src/sub' is a submodule in the tree"),
    (write("src/app.py/x.py"), "src/app.py/x.py", "its parent 'src/app.py' is a file in the tree, not a folder"),
    (write("src/pkg"), "src/pkg", "is a folder in the tree"),
    ([WholeFile("src/n1", "x\n"), WholeFile("src/n1/x.py", "y\n")], "src/n1/x.py", "conflicts with the file 'src/n1'"),
], ids=["symlink", "under a symlink", "submodule", "under a submodule", "under a file", "folder", "file and folder"])
def test_what_the_parent_tree_decides_is_refused_before_anything_is_written(ops: list[EditOp], path: str, reason: str) -> None:
    policy = EditPolicy(scope=("src/**",), tree=TREE)
    with pytest.raises(EditRefused) as info:
        govern(ops, {"src/app.py": "a = 1\n", "src/pkg/mod.py": "m = 1\n", "src/run.sh": "echo\n"}.get, policy)
    [(refused, why)] = info.value.reasons
    assert refused == path and reason in why


def test_ordinary_edits_pass_the_tree_checks() -> None:
    policy = EditPolicy(scope=("src/**",), tree=TREE, allow_delete=True)
    changes = govern([WholeFile("src/app.py", "a = 2\n"), WholeFile("src/new/deep/x.py", "x = 1\n"), WholeFile("src/pkg/other.py", "o\n"),
                      WholeFile("src/run.sh", "echo 2\n"), DeleteFile("src/link")],
                     {"src/app.py": "a = 1\n", "src/run.sh": "echo\n", "src/link": "target"}.get, policy)
    assert set(changes) == {"src/app.py", "src/new/deep/x.py", "src/pkg/other.py", "src/run.sh", "src/link"}
