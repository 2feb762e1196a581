from __future__ import annotations

import pytest

from autopack.edits.apply import apply_edits
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
from autopack.errors import EditApplyError

MODULE = """import os


class Greeter:
    def __init__(self, name):
        self.name = name

    def greet(self):
        return "hello " + self.name

    def shout(self):
        return self.greet().upper()
"""


def run(ops: list[EditOp], files: dict[str, str]) -> dict[str, str | None]:
    return apply_edits(ops, files.get)


def test_search_replace_exact() -> None:
    op = SearchReplace("g.py", '        return "hello " + self.name\n', '        return f"hello {self.name}"\n')
    out = run([op], {"g.py": MODULE})
    assert out == {"g.py": MODULE.replace('"hello " + self.name', 'f"hello {self.name}"')}


def test_search_replace_trailing_whitespace_tolerant() -> None:
    text = "a = 1   \nb = 2\t\nc = 3\n"
    out = run([SearchReplace("x.py", "a = 1\nb = 2\n", "a = 10\nb = 20\n")], {"x.py": text})
    assert out["x.py"] == "a = 10\nb = 20\nc = 3\n"


def test_search_replace_indentation_tolerant_reindents_replacement() -> None:
    # The model quoted the method without its class indentation.
    search = "def greet(self):\n    return \"hello \" + self.name\n"
    replace = "def greet(self):\n    name = self.name\n    return \"hello \" + name\n"
    out = run([SearchReplace("g.py", search, replace)], {"g.py": MODULE})
    assert out["g.py"] == MODULE.replace(
        '    def greet(self):\n        return "hello " + self.name\n',
        '    def greet(self):\n        name = self.name\n        return "hello " + name\n',
    )


def test_search_replace_over_indented_search_is_dedented() -> None:
    text = "if x:\n    y()\nz()\n"
    out = run([SearchReplace("x.py", "        if x:\n            y()\n", "        if x:\n            w()\n")], {"x.py": text})
    assert out["x.py"] == "if x:\n    w()\nz()\n"


def test_search_replace_inconsistent_indentation_does_not_match() -> None:
    text = "if x:\n    y()\n"
    with pytest.raises(EditApplyError):
        run([SearchReplace("x.py", "    if x:\ny()\n", "pass\n")], {"x.py": text})


def test_search_replace_ambiguous() -> None:
    text = "x = 1\ny = 2\nx = 1\n"
    with pytest.raises(EditApplyError) as info:
        run([SearchReplace("x.py", "x = 1\n", "x = 3\n")], {"x.py": text})
    assert "2 places" in info.value.message and "lines 1, 3" in info.value.message


def test_search_replace_ambiguous_at_tolerant_level() -> None:
    text = "  a\n b\n    a\n"
    with pytest.raises(EditApplyError, match="2 places"):
        run([SearchReplace("x.py", "a\n", "c\n")], {"x.py": text})


def test_search_replace_non_match_gives_closest_lines() -> None:
    search = '    def greet(self):\n        return "hi " + self.name\n'
    with pytest.raises(EditApplyError) as info:
        run([SearchReplace("g.py", search, "x\n")], {"g.py": MODULE})
    err = info.value
    assert err.path == "g.py"
    assert "not found" in err.message
    assert "8 |     def greet(self):" in err.closest
    assert '9 |         return "hello " + self.name' in err.closest
    assert "import os" not in err.closest
    assert err.closest in str(err)


def test_search_replace_creates_missing_file_with_empty_search() -> None:
    assert run([SearchReplace("new.py", "", "x = 1\n")], {}) == {"new.py": "x = 1\n"}


def test_search_replace_missing_file_with_search_is_error() -> None:
    with pytest.raises(EditApplyError, match="does not exist"):
        run([SearchReplace("new.py", "x\n", "y\n")], {})


def test_search_replace_empty_search_on_existing_file_is_error() -> None:
    with pytest.raises(EditApplyError, match="already exists"):
        run([SearchReplace("x.py", "", "y\n")], {"x.py": "x\n"})


def test_sequential_ops_on_one_file_compose() -> None:
    ops: list[EditOp] = [
        SearchReplace("n.py", "", "a = 1\n"),
        SearchReplace("n.py", "a = 1\n", "a = 1\nb = 2\n"),
        SearchReplace("n.py", "b = 2\n", "b = 3\n"),
    ]
    assert run(ops, {}) == {"n.py": "a = 1\nb = 3\n"}


def test_trailing_newline_absent_is_kept() -> None:
    out = run([SearchReplace("x.txt", "b\n", "c\n")], {"x.txt": "a\nb"})
    assert out["x.txt"] == "a\nc"


def test_crlf_is_kept() -> None:
    out = run([SearchReplace("x.txt", "b\n", "c\nd\n")], {"x.txt": "a\r\nb\r\n"})
    assert out["x.txt"] == "a\r\nc\r\nd\r\n"


def test_whole_file_keeps_no_trailing_newline_convention() -> None:
    out = run([WholeFile("x.txt", "new\ncontent\n")], {"x.txt": "old"})
    assert out["x.txt"] == "new\ncontent"
    assert run([WholeFile("y.txt", "new\n")], {})["y.txt"] == "new\n"


def _diff(path: str, *hunks: Hunk) -> UnifiedDiff:
    return UnifiedDiff(path, tuple(hunks))


def _hunk(start: int | None, body: str) -> Hunk:
    return Hunk(start, tuple(HunkLine(ln[0], ln[1:]) for ln in body.splitlines()))  # type: ignore[arg-type]


def test_diff_with_wrong_line_numbers_applies_by_content() -> None:
    hunk = _hunk(100, '     def greet(self):\n-        return "hello " + self.name\n+        return "hi " + self.name\n')
    out = run([_diff("g.py", hunk)], {"g.py": MODULE})
    assert out["g.py"] == MODULE.replace('"hello "', '"hi "')


def test_diff_prefers_match_nearest_hint() -> None:
    text = "".join(f"line{k}\nx = 0\n" for k in range(10))  # "x = 0" at lines 2, 4, ..., 20
    out = run([_diff("x.py", _hunk(14, "-x = 0\n+x = 1\n"))], {"x.py": text})
    lines = out["x.py"].splitlines()  # type: ignore[union-attr]
    assert [i + 1 for i, ln in enumerate(lines) if ln == "x = 1"] == [14]


def test_diff_equidistant_ambiguity_is_error() -> None:
    text = "x\na\nx\n"
    with pytest.raises(EditApplyError, match="equally well"):
        run([_diff("x.py", _hunk(2, "-x\n+y\n"))], {"x.py": text})


def test_diff_multiple_hunks_from_parsed_answer() -> None:
    answer = """```diff
--- a/g.py
+++ b/g.py
@@ -1,3 +1,4 @@
 import os
+import sys
 
 
@@ -40,4 +41,4 @@ class Greeter:
     def shout(self):
-        return self.greet().upper()
+        return self.greet().upper() + "!"
```
"""
    out = apply_edits(parse_edits(answer), {"g.py": MODULE}.get)
    expected = MODULE.replace("import os\n", "import os\nimport sys\n").replace(
        "self.greet().upper()", 'self.greet().upper() + "!"'
    )
    assert out["g.py"] == expected


def test_diff_tolerates_trailing_whitespace_and_keeps_file_context() -> None:
    text = "a = 1  \nb = 2\nc = 3\n"
    out = run([_diff("x.py", _hunk(1, " a = 1\n-b = 2\n+b = 20\n c = 3\n"))], {"x.py": text})
    assert out["x.py"] == "a = 1  \nb = 20\nc = 3\n"


def test_diff_non_match_gives_closest_lines() -> None:
    with pytest.raises(EditApplyError) as info:
        run([_diff("g.py", _hunk(3, "     def shout(self):\n-        return self.greet().lower()\n+        pass\n"))], {"g.py": MODULE})
    assert "does not match" in info.value.message
    assert "11 |     def shout(self):" in info.value.closest


def test_diff_pure_insertion_uses_hint() -> None:
    out = run([_diff("x.py", _hunk(2, "+inserted\n"))], {"x.py": "a\nb\n"})
    assert out["x.py"] == "a\ninserted\nb\n"


def test_diff_new_file_rename_and_delete() -> None:
    files = {"old.py": "a\nb\n", "gone.py": "z\n"}
    ops: list[EditOp] = [
        UnifiedDiff("new.py", (_hunk(1, "+n1\n+n2\n"),), new_file=True),
        UnifiedDiff("moved.py", (_hunk(1, " a\n-b\n+c\n"),), old_path="old.py"),
        UnifiedDiff("gone.py", (), deleted_file=True),
    ]
    assert run(ops, files) == {"new.py": "n1\nn2\n", "moved.py": "a\nc\n", "old.py": None, "gone.py": None}


def test_diff_new_file_that_exists_is_error() -> None:
    with pytest.raises(EditApplyError, match="already exists"):
        run([UnifiedDiff("x.py", (_hunk(1, "+a\n"),), new_file=True)], {"x.py": "b\n"})


def test_delete_missing_file_is_error() -> None:
    with pytest.raises(EditApplyError, match="does not exist"):
        run([DeleteFile("nope.py")], {})


def test_edit_after_delete_sees_missing_file() -> None:
    with pytest.raises(EditApplyError, match="does not exist"):
        run([DeleteFile("x.py"), SearchReplace("x.py", "a\n", "b\n")], {"x.py": "a\n"})


def test_read_is_not_mutated_and_untouched_files_absent() -> None:
    files = {"a.py": "a\n", "b.py": "b\n"}
    out = run([SearchReplace("a.py", "a\n", "c\n")], files)
    assert out == {"a.py": "c\n"}
    assert files == {"a.py": "a\n", "b.py": "b\n"}
