"""Parse a Builder answer into edit operations.

Three formats are understood, freely mixed, with prose around them ignored:

* SEARCH/REPLACE blocks: a line naming the file, then ``<<<<<<< SEARCH``,
  the lines to find, ``=======``, the new lines, ``>>>>>>> REPLACE``;
* unified diffs (``diff --git``, ``--- a/x`` / ``+++ b/x``, ``@@`` hunks);
* whole files: ``=== FILE: path ===`` followed by a fenced code block, and
  ``=== DELETE: path ===``.

Code fences around blocks and diffs are transparent. Anything malformed raises
:class:`~autopack.errors.EditParseError` naming the line (1-based) at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autopack.edits.model import (
    DeleteFile,
    EditOp,
    Hunk,
    HunkLine,
    HunkLineKind,
    SearchReplace,
    UnifiedDiff,
    WholeFile,
)
from autopack.errors import EditParseError

SEARCH_RE = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
DIVIDER_RE = re.compile(r"^\s*={7}\s*$")
REPLACE_RE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
FILE_RE = re.compile(r"^\s*={3}\s*FILE:(.*?)={3}\s*$")
DELETE_RE = re.compile(r"^\s*={3}\s*DELETE:(.*?)={3}\s*$")
FENCE_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# At most 9 digits: a line number past that is not one (and int() refuses over 4,300 digits).
HUNK_NUMBERS_RE = re.compile(r"^@@\s*-(\d{1,9})(?:,(\d{1,9}))?\s+\+(\d{1,9})(?:,(\d{1,9}))?\s*@@")
GIT_HEADER_RE = re.compile(r"^diff --git (\S+) (\S+)\s*$")
DEV_NULL = "/dev/null"

__all__ = ["parse_edits"]


@dataclass(frozen=True)
class _Fence:
    char: str
    length: int
    indent: int
    line: int  # 1-based


def _fence_open(line: str) -> _Fence | None:
    m = FENCE_RE.match(line)
    if m is None:
        return None
    fence = m.group("fence")
    if fence[0] == "`" and "`" in m.group("info"):
        return None  # inline code such as ```x```, not a fence
    return _Fence(fence[0], len(fence), len(m.group("indent")), 0)


def _closes(line: str, fence: _Fence) -> bool:
    m = FENCE_RE.match(line)
    if m is None or m.group("info").strip():
        return False
    marker = m.group("fence")
    return marker[0] == fence.char and len(marker) >= fence.length


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _clean_path(raw: str) -> str:
    """Strip markdown decoration (backticks, bold, heading marks, quotes) from a path."""
    text = raw.strip()
    text = re.sub(r"^#+\s*", "", text)
    for _ in range(3):
        text = text.strip().strip("*`'\"").strip()
        if text.endswith(":"):
            text = text[:-1]
        lowered = text.lower()
        for prefix in ("file:", "path:", "filename:"):
            if lowered.startswith(prefix):
                text = text[len(prefix):]
                break
    return text.strip()


def _path_from_line(line: str) -> str | None:
    """The file path a line names, or None if it is prose (contains spaces) or empty."""
    text = _clean_path(line)
    if not text or any(ch.isspace() for ch in text):
        return None
    if text[0] in "<>=" or _fence_open(text) is not None:
        return None
    return text


def _diff_path(raw: str, prefix: str) -> str | None:
    """Path from a ``---``/``+++`` header value; ``None`` for /dev/null."""
    value = raw.split("\t", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value == DEV_NULL:
        return None
    if value.startswith(prefix):
        value = value[len(prefix):]
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.ops: list[EditOp] = []
        self.fence: _Fence | None = None
        # The last prose line seen (1-based number, text), a candidate file path
        # for a following SEARCH block; or the path of the block just closed.
        self.path_line: tuple[int, str] | None = None
        self.after_block_path: str | None = None

    def error(self, line: int, message: str) -> EditParseError:
        return EditParseError(f"line {line}: {message}")

    def run(self) -> list[EditOp]:
        i = 0
        n = len(self.lines)
        while i < n:
            line = self.lines[i]
            if FILE_RE.match(line):
                i = self._whole_file(i)
            elif m := DELETE_RE.match(line):
                path = _clean_path(m.group(1))
                if not path:
                    raise self.error(i + 1, "=== DELETE: === names no file")
                self.ops.append(DeleteFile(path))
                self._reset_path()
                i += 1
            elif SEARCH_RE.match(line):
                i = self._search_replace(i)
            elif REPLACE_RE.match(line):
                raise self.error(i + 1, ">>>>>>> REPLACE without a matching <<<<<<< SEARCH")
            elif line.startswith("diff --git ") or (
                line.startswith("--- ") and i + 1 < n and self.lines[i + 1].startswith("+++ ")
            ):
                i = self._diff(i)
            elif line.startswith("@@"):
                raise self.error(
                    i + 1, "hunk header @@ without a file header (--- a/path and +++ b/path) before it"
                )
            else:
                self._other(i, line)
                i += 1
        if self.fence is not None:
            raise self.error(self.fence.line, "code fence opened here is never closed")
        if not self.ops:
            raise EditParseError(
                "no edits found in the answer: expected SEARCH/REPLACE blocks, "
                "a unified diff, or === FILE: path === blocks"
            )
        return self.ops

    def _reset_path(self) -> None:
        self.path_line = None
        self.after_block_path = None

    def _other(self, i: int, line: str) -> None:
        """A line outside any edit: track fences and remember prose for paths."""
        if self.fence is not None and _closes(line, self.fence):
            self.fence = None
            return
        if self.fence is None:
            opened = _fence_open(line)
            if opened is not None:
                self.fence = _Fence(opened.char, opened.length, opened.indent, i + 1)
                return
        elif _fence_open(line) is not None:
            return  # a fence-looking line inside an open fence
        if line.strip():
            self.path_line = (i + 1, line)
            self.after_block_path = None

    # -- SEARCH/REPLACE -----------------------------------------------------

    def _search_replace(self, i: int) -> int:
        start = i + 1
        if self.after_block_path is not None:
            path: str | None = self.after_block_path
        elif self.path_line is None:
            raise self.error(
                start, "SEARCH block without a file path: put the path alone on the line before it"
            )
        else:
            path = _path_from_line(self.path_line[1])
            if path is None:
                raise self.error(
                    start,
                    "SEARCH block without a file path: the line before it "
                    f"(line {self.path_line[0]}: {self.path_line[1].strip()!r}) is not a path",
                )
        assert path is not None
        n = len(self.lines)
        j = i + 1
        search: list[str] = []
        while j < n and not DIVIDER_RE.match(self.lines[j]):
            if SEARCH_RE.match(self.lines[j]) or REPLACE_RE.match(self.lines[j]):
                raise self.error(
                    start,
                    f"SEARCH block for {path} is not terminated: line {j + 1} "
                    f"{self.lines[j].strip()!r} comes before its ======= divider",
                )
            search.append(self.lines[j])
            j += 1
        if j >= n:
            raise self.error(
                start, f"SEARCH block for {path} is not terminated: no ======= divider follows"
            )
        j += 1
        replace: list[str] = []
        while j < n and not REPLACE_RE.match(self.lines[j]):
            if SEARCH_RE.match(self.lines[j]):
                raise self.error(
                    start,
                    f"SEARCH block for {path} is not terminated: a new <<<<<<< SEARCH "
                    f"at line {j + 1} comes before its >>>>>>> REPLACE",
                )
            replace.append(self.lines[j])
            j += 1
        if j >= n:
            raise self.error(
                start, f"SEARCH block for {path} is not terminated: no >>>>>>> REPLACE follows"
            )
        self.ops.append(SearchReplace(path, _join(search), _join(replace)))
        self.path_line = None
        self.after_block_path = path
        return j + 1

    # -- whole file ---------------------------------------------------------

    def _whole_file(self, i: int) -> int:
        m = FILE_RE.match(self.lines[i])
        assert m is not None
        path = _clean_path(m.group(1))
        if not path:
            raise self.error(i + 1, "=== FILE: === names no file")
        n = len(self.lines)
        j = i + 1
        while j < n and not self.lines[j].strip():
            j += 1
        fence = _fence_open(self.lines[j]) if j < n else None
        if fence is None:
            found = repr(self.lines[j].strip()) if j < n else "the end of the answer"
            raise self.error(
                i + 1,
                f"=== FILE: {path} === must be followed by a fenced code block "
                f"with the complete content; found {found}",
            )
        open_line = j + 1
        j += 1
        content: list[str] = []
        while j < n and not _closes(self.lines[j], fence):
            text = self.lines[j]
            if fence.indent:
                lead = len(text) - len(text.lstrip(" "))
                text = text[min(lead, fence.indent):]
            content.append(text)
            j += 1
        if j >= n:
            raise self.error(open_line, f"code fence for {path} opened here is never closed")
        self.ops.append(WholeFile(path, _join(content)))
        self._reset_path()
        return j + 1

    # -- unified diff -------------------------------------------------------

    def _diff(self, i: int) -> int:
        start = i + 1
        lines = self.lines
        n = len(lines)
        git_old: str | None = None
        git_new: str | None = None
        rename_from: str | None = None
        rename_to: str | None = None
        new_file = False
        deleted = False
        mode: str | None = None
        is_git = lines[i].startswith("diff --git ")
        if is_git:
            m = GIT_HEADER_RE.match(lines[i])
            if m is not None:
                git_old = _diff_path(m.group(1), "a/")
                git_new = _diff_path(m.group(2), "b/")
            i += 1
            while i < n:
                line = lines[i]
                if line.startswith("new file mode "):
                    new_file = True
                    mode = line.split()[-1]
                elif line.startswith("deleted file mode "):
                    deleted = True
                elif line.startswith("new mode "):
                    mode = line.split()[-1]
                elif line.startswith("rename from "):
                    rename_from = line[len("rename from "):].strip()
                elif line.startswith("rename to "):
                    rename_to = line[len("rename to "):].strip()
                elif line.startswith(("copy from ", "copy to ")):
                    raise self.error(i + 1, "copy diffs are not supported: write the new file instead")
                elif line.startswith(("Binary files ", "GIT binary patch")):
                    raise self.error(i + 1, "binary diffs are not supported")
                elif not line.startswith(
                    ("old mode ", "index ", "similarity index ", "dissimilarity index ")
                ):
                    break
                i += 1
        old: str | None = rename_from or git_old
        new: str | None = rename_to or git_new
        has_headers = False
        if i + 1 < n and lines[i].startswith("--- ") and lines[i + 1].startswith("+++ "):
            has_headers = True
            old_raw, new_raw = lines[i][4:], lines[i + 1][4:]
            strip = old_raw.startswith(("a/", DEV_NULL)) and new_raw.startswith(("b/", DEV_NULL))
            old = _diff_path(old_raw, "a/" if strip else "\0")
            new = _diff_path(new_raw, "b/" if strip else "\0")
            if old is None:
                new_file = True
            if new is None:
                deleted = True
            i += 2
        elif not is_git:
            raise self.error(start, "--- header without a +++ header")
        hunks: list[Hunk] = []
        while i < n and lines[i].startswith("@@"):
            hunk, i = self._hunk(i)
            hunks.append(hunk)
        if deleted:
            path = old if old is not None else new
        else:
            path = new if new is not None else old
        if not path:
            raise self.error(start, "diff header names no file")
        if has_headers and not hunks and not (new_file or deleted):
            raise self.error(start, f"diff for {path} has a file header but no @@ hunk")
        if new_file and deleted:
            raise self.error(start, f"diff for {path} both creates and deletes it")
        old_path = old if (old is not None and not new_file and not deleted and old != path) else None
        self.ops.append(UnifiedDiff(path, tuple(hunks), old_path, new_file, deleted, mode))
        self._reset_path()
        return i

    def _hunk(self, i: int) -> tuple[Hunk, int]:
        lines = self.lines
        n = len(lines)
        header_line = i + 1
        old_start: int | None = None
        counts: tuple[int, int] | None = None  # (old, new) line counts from the header
        m = HUNK_NUMBERS_RE.match(lines[i])
        if m is not None:
            counts = (int(m.group(2) or 1), int(m.group(4) or 1))
            old_start = int(m.group(1))
            if m.group(2) == "0":
                old_start += 1  # pure insertion: after line N, i.e. before N + 1
            old_start = max(old_start, 1)
        i += 1
        body: list[HunkLine] = []
        pending_blank = 0
        while i < n:
            line = lines[i]
            if line.startswith(("@@", "diff --git ")):
                break
            if line.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ "):
                break
            if line == "":
                if counts is not None and _covers(_counted(body, pending_blank), counts):
                    break  # the header's counts are met: what follows is not this hunk
                pending_blank += 1  # blank context whose leading space was lost; dropped if trailing
                i += 1
                continue
            if line[0] == "\\":  # "\ No newline at end of file"
                i += 1
                continue
            if line[0] not in " +-":
                break
            body.extend(HunkLine(" ", "") for _ in range(pending_blank))
            pending_blank = 0
            kind: HunkLineKind = " " if line[0] == " " else ("+" if line[0] == "+" else "-")
            body.append(HunkLine(kind, line[1:]))
            i += 1
        if not body:
            raise self.error(header_line, "hunk has no lines")
        return Hunk(old_start, tuple(body), header_line), i


def _counted(body: list[HunkLine], blanks: int) -> tuple[int, int]:
    """(old, new) line counts of a hunk body so far, counting pending blank context lines."""
    old = sum(1 for hl in body if hl.kind != "+") + blanks
    new = sum(1 for hl in body if hl.kind != "-") + blanks
    return old, new


def _covers(seen: tuple[int, int], counts: tuple[int, int]) -> bool:
    return seen[0] >= counts[0] and seen[1] >= counts[1]


def parse_edits(text: str) -> list[EditOp]:
    """Parse every edit in a Builder answer, in the order written.

    Raises :class:`EditParseError` with the 1-based line number for malformed
    input, and when the answer contains no edit at all.
    """
    return _Parser(text).run()
