from __future__ import annotations

from pathlib import Path

import pytest

from autopack.edits.model import DeleteFile, HunkLine, SearchReplace, UnifiedDiff, WholeFile
from autopack.edits.parse import parse_edits
from autopack.errors import EditParseError

FENCE = "```"


def test_search_replace_bare() -> None:
    text = "src/a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n"
    assert parse_edits(text) == [SearchReplace("src/a.py", "x = 1\n", "x = 2\n")]


@pytest.mark.parametrize(
    "path_line", ["src/a.py", "`src/a.py`", "**src/a.py**", "### src/a.py", "src/a.py:", "File: `src/a.py`"]
)
def test_search_replace_path_decorations(path_line: str) -> None:
    text = f"Some prose.\n\n{path_line}\n{FENCE}python\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n{FENCE}\n"
    assert parse_edits(text) == [SearchReplace("src/a.py", "x = 1\n", "x = 2\n")]


def test_search_replace_path_inside_fence() -> None:
    text = f"{FENCE}\nsrc/a.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n{FENCE}\n"
    assert parse_edits(text) == [SearchReplace("src/a.py", "a\n", "b\n")]


def test_search_replace_empty_search_and_empty_replace() -> None:
    text = "new.txt\n<<<<<<< SEARCH\n=======\nhello\n>>>>>>> REPLACE\nold.txt\n<<<<<<< SEARCH\ngone\n=======\n>>>>>>> REPLACE\n"
    assert parse_edits(text) == [
        SearchReplace("new.txt", "", "hello\n"),
        SearchReplace("old.txt", "gone\n", ""),
    ]


def test_search_replace_consecutive_blocks_reuse_path() -> None:
    text = (
        "src/a.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n\n"
        "<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n"
    )
    ops = parse_edits(text)
    assert [op.path for op in ops] == ["src/a.py", "src/a.py"]


def test_search_replace_keeps_fence_lines_inside_block() -> None:
    text = f"README.md\n<<<<<<< SEARCH\n{FENCE}sh\nmake\n{FENCE}\n=======\n{FENCE}sh\nmake all\n{FENCE}\n>>>>>>> REPLACE\n"
    [op] = parse_edits(text)
    assert op == SearchReplace("README.md", f"{FENCE}sh\nmake\n{FENCE}\n", f"{FENCE}sh\nmake all\n{FENCE}\n")


def test_crlf_answer() -> None:
    text = "a.py\r\n<<<<<<< SEARCH\r\nx\r\n=======\r\ny\r\n>>>>>>> REPLACE\r\n"
    assert parse_edits(text) == [SearchReplace("a.py", "x\n", "y\n")]


def test_unified_diff_in_fence_with_prose() -> None:
    text = f"""I will fix the bug.

{FENCE}diff
diff --git a/src/b.py b/src/b.py
index 123..456 100644
--- a/src/b.py
+++ b/src/b.py
@@ -10,3 +10,3 @@ def f():
 x = 1
-y = 2
+y = 3
 z = 4
@@ -20 +20,2 @@
 tail
+more
{FENCE}

That is all.
"""
    [op] = parse_edits(text)
    assert isinstance(op, UnifiedDiff)
    assert op.path == "src/b.py" and op.old_path is None
    assert not op.new_file and not op.deleted_file and op.mode is None
    assert [h.old_start for h in op.hunks] == [10, 20]
    assert op.hunks[0].lines == (
        HunkLine(" ", "x = 1"),
        HunkLine("-", "y = 2"),
        HunkLine("+", "y = 3"),
        HunkLine(" ", "z = 4"),
    )
    assert op.hunks[0].old_lines == ("x = 1", "y = 2", "z = 4")
    assert op.hunks[0].new_lines == ("x = 1", "y = 3", "z = 4")
    assert op.hunks[1].new_lines == ("tail", "more")
    assert op.hunks[0].source_line == 8


def test_unified_diff_bare_without_prefixes_and_several_files() -> None:
    text = "--- x.py\n+++ x.py\n@@ -1 +1 @@\n-a\n+b\n--- y.py\n+++ y.py\n@@ @@\n-c\n+d\n"
    ops = parse_edits(text)
    assert [op.path for op in ops] == ["x.py", "y.py"]
    assert isinstance(ops[1], UnifiedDiff) and ops[1].hunks[0].old_start is None


def test_unified_diff_blank_context_line_without_space() -> None:
    text = "--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n\nprose after\n"
    [op] = parse_edits(text)
    assert isinstance(op, UnifiedDiff)
    assert op.hunks[0].old_lines == ("a", "", "b")
    assert op.hunks[0].new_lines == ("a", "", "c")


def test_unified_diff_create_and_delete_dev_null() -> None:
    text = (
        "--- /dev/null\n+++ b/new.py\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        "--- a/old.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n"
    )
    created, deleted = parse_edits(text)
    assert isinstance(created, UnifiedDiff) and created.new_file and created.path == "new.py"
    assert created.hunks[0].new_lines == ("a", "b")
    assert isinstance(deleted, UnifiedDiff) and deleted.deleted_file and deleted.path == "old.py"


def test_git_diff_new_file_mode_and_deleted_file_mode() -> None:
    text = (
        "diff --git a/link b/link\nnew file mode 120000\nindex 0000000..1111111\n"
        "--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n"
        "diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n"
    )
    link, gone = parse_edits(text)
    assert isinstance(link, UnifiedDiff) and link.mode == "120000" and link.new_file
    assert link.hunks[0].new_lines == ("/etc/passwd",)
    assert isinstance(gone, UnifiedDiff) and gone.deleted_file and gone.path == "gone.py"


def test_git_diff_mode_change_and_rename() -> None:
    text = (
        "diff --git a/sub b/sub\nold mode 100644\nnew mode 160000\n"
        "diff --git a/old/name.py b/new/name.py\nsimilarity index 90%\n"
        "rename from old/name.py\nrename to new/name.py\n"
        "--- a/old/name.py\n+++ b/new/name.py\n@@ -1 +1 @@\n-a\n+b\n"
    )
    mode, rename = parse_edits(text)
    assert isinstance(mode, UnifiedDiff) and mode.mode == "160000" and mode.path == "sub"
    assert isinstance(rename, UnifiedDiff)
    assert (rename.path, rename.old_path) == ("new/name.py", "old/name.py")


def test_whole_file_and_delete() -> None:
    text = f"""Rewriting the module.

=== FILE: src/pkg/mod.py ===
{FENCE}python
def f():

    return 1
{FENCE}

=== DELETE: `src/pkg/old.py` ===
"""
    assert parse_edits(text) == [
        WholeFile("src/pkg/mod.py", "def f():\n\n    return 1\n"),
        DeleteFile("src/pkg/old.py"),
    ]


def test_whole_file_longer_fence_allows_inner_fences() -> None:
    text = f"=== FILE: README.md ===\n````markdown\n# T\n{FENCE}sh\nmake\n{FENCE}\n````\n"
    assert parse_edits(text) == [WholeFile("README.md", f"# T\n{FENCE}sh\nmake\n{FENCE}\n")]


def test_whole_file_empty_content() -> None:
    assert parse_edits(f"=== FILE: pkg/__init__.py ===\n{FENCE}\n{FENCE}\n") == [WholeFile("pkg/__init__.py", "")]


def test_mixed_formats_keep_order() -> None:
    text = f"""First the diff:
--- a/one.py
+++ b/one.py
@@ -1 +1 @@
-1
+2

Then a block:
two.py
<<<<<<< SEARCH
a
=======
b
>>>>>>> REPLACE

=== FILE: three.py ===
{FENCE}
c
{FENCE}
=== DELETE: four.py ===
"""
    ops = parse_edits(text)
    assert [type(op).__name__ for op in ops] == ["UnifiedDiff", "SearchReplace", "WholeFile", "DeleteFile"]
    assert [op.path for op in ops] == ["one.py", "two.py", "three.py", "four.py"]


def test_prompt_examples_parse() -> None:
    prompt = Path(__file__).resolve().parents[2] / "prompts" / "edit_formats.md"
    ops = parse_edits(prompt.read_text())
    assert [(type(op).__name__, op.path) for op in ops] == [
        ("SearchReplace", "src/pkg/util.py"),
        ("UnifiedDiff", "src/pkg/util.py"),
        ("WholeFile", "src/pkg/version.py"),
        ("DeleteFile", "src/pkg/legacy.py"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a.py\n<<<<<<< SEARCH\nx\n", 2, "no ======= divider"),
        ("a.py\n<<<<<<< SEARCH\nx\n=======\ny\n", 2, "no >>>>>>> REPLACE"),
        ("a.py\n<<<<<<< SEARCH\nx\n>>>>>>> REPLACE\n", 2, "before its ======= divider"),
        ("a.py\n<<<<<<< SEARCH\nx\n=======\ny\n<<<<<<< SEARCH\n", 2, "comes before its >>>>>>> REPLACE"),
        ("<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n", 1, "without a file path"),
        ("Here is the fix:\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n", 2, "is not a path"),
        ("intro\n>>>>>>> REPLACE\n", 2, "without a matching"),
        ("Fix:\n@@ -1 +1 @@\n-a\n+b\n", 2, "without a file header"),
        (f"Fix:\n\n{FENCE}diff\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", 3, "never closed"),
        (f"=== FILE: a.py ===\n{FENCE}python\nx = 1\n", 2, "never closed"),
        ("=== FILE: a.py ===\nx = 1\n", 1, "fenced code block"),
        (f"=== FILE:  ===\n{FENCE}\nx\n{FENCE}\n", 1, "names no file"),
        ("=== DELETE: ===\n", 1, "names no file"),
        ("--- a/x.py\n+++ b/x.py\nprose\n", 1, "no @@ hunk"),
        ("--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n", 3, "hunk has no lines"),
        ("diff --git a/x.png b/x.png\nBinary files a/x.png and b/x.png differ\n", 2, "binary"),
    ],
)
def test_malformed_input_names_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(EditParseError) as info:
        parse_edits(text)
    message = str(info.value)
    assert message.startswith(f"line {line}:"), message
    assert fragment in message


@pytest.mark.parametrize("text", ["", "I could not find anything to change.", f"{FENCE}python\nprint(1)\n{FENCE}\n"])
def test_no_edits_is_an_error(text: str) -> None:
    with pytest.raises(EditParseError, match="no edits found"):
        parse_edits(text)


def test_bare_diff_followed_by_bullet_list_stops_at_header_counts() -> None:
    text = "--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n\n- note: this bullet is prose\n"
    [op] = parse_edits(text)
    assert isinstance(op, UnifiedDiff)
    assert op.hunks[0].old_lines == ("a", "b")
    assert op.hunks[0].new_lines == ("a", "c")


def test_blank_context_line_kept_while_counts_not_met() -> None:
    text = "--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n-a\n+z\n\n-b\n+c\n"
    [op] = parse_edits(text)
    assert isinstance(op, UnifiedDiff)
    assert op.hunks[0].old_lines == ("a", "", "b")


def test_a_hunk_header_with_an_absurd_line_number_is_not_a_crash() -> None:
    """int() refuses over 4,300 digits: such a header is read as one without numbers, like any
    header the parser cannot read, never a ValueError out of the parser."""
    text = "--- a/calc/core.py\n+++ b/calc/core.py\n@@ -" + "9" * 4400 + " +1 @@\n-x\n+y\n"
    [op] = parse_edits(text)
    assert isinstance(op, UnifiedDiff) and op.path == "calc/core.py"
    assert [(line.kind, line.text) for line in op.hunks[0].lines] == [("-", "x"), ("+", "y")]
