"""Compute, purely in memory, what the files become once the edits are applied.

``apply_edits`` never touches a disk: it reads current contents through a
callable and returns the new content of every touched file (``None`` = delete).
Hunks and SEARCH blocks are located by content, never trusted by line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from autopack.edits.match import IndentShift, closest_snippet, find_block
from autopack.edits.model import (
    DeleteFile,
    EditOp,
    Hunk,
    SearchReplace,
    UnifiedDiff,
    WholeFile,
)
from autopack.errors import EditApplyError

Reader = Callable[[str], str | None]

__all__ = ["apply_edits", "Reader"]


@dataclass(frozen=True)
class _Text:
    """A file as lines plus its line-ending conventions."""

    lines: list[str]
    newline: str
    trailing: bool

    @staticmethod
    def of(text: str) -> _Text:
        newline = "\r\n" if "\r\n" in text else "\n"
        body = text.replace("\r\n", "\n")
        trailing = body.endswith("\n")
        if trailing:
            body = body[:-1]
        lines = body.split("\n") if body or not trailing else [""]
        if not text:
            lines = []
        return _Text(lines, newline, trailing or not text)

    def render(self, lines: Sequence[str]) -> str:
        if not lines:
            return ""
        out = self.newline.join(lines)
        return out + self.newline if self.trailing else out


def _lines(text: str) -> list[str]:
    """Lines of an edit's text (its own trailing newline does not make an extra line)."""
    body = text.replace("\r\n", "\n")
    if body.endswith("\n"):
        body = body[:-1]
    elif not body:
        return []
    return body.split("\n")


def _line_numbers(starts: Sequence[int]) -> str:
    return ", ".join(str(s + 1) for s in starts)


def _search_replace(op: SearchReplace, current: str | None) -> str:
    if current is None:
        if op.search.strip():
            raise EditApplyError(op.path, "the file does not exist (an empty SEARCH creates a file)")
        return op.replace
    text = _Text.of(current)
    search = _lines(op.search)
    replace = _lines(op.replace)
    if not op.search.strip():
        if not current.strip():
            return text.render(replace) if replace else ""
        raise EditApplyError(
            op.path,
            "SEARCH is empty but the file already exists and is not empty; "
            "quote the lines to change, or give the whole file with === FILE: ===",
        )
    found = find_block(text.lines, search)
    if found is None:
        raise EditApplyError(
            op.path,
            "the SEARCH lines were not found in the file (not even ignoring whitespace); "
            "SEARCH must copy the current lines exactly",
            closest_snippet(text.lines, search),
        )
    if len(found.starts) > 1:
        raise EditApplyError(
            op.path,
            f"the SEARCH lines match {len(found.starts)} places (lines "
            f"{_line_numbers(found.starts)}); include more surrounding lines to make it unique",
        )
    start, shift = found.starts[0], found.shifts[0]
    new_block = [shift.apply(ln) for ln in replace]
    lines = text.lines[:start] + new_block + text.lines[start + len(search):]
    return text.render(lines)


def _name(hunk: Hunk) -> str:
    return f"hunk at answer line {hunk.source_line}" if hunk.source_line else "hunk"


def _choose(
    path: str, hunk: Hunk, starts: Sequence[int], hint: int | None, floor: int
) -> int:
    """Pick the match nearest the hinted position; refuse a tie."""
    if len(starts) == 1:
        return starts[0]
    if hint is None:
        after = [s for s in starts if s >= floor]
        if after:
            return after[0]
        raise EditApplyError(
            path,
            f"{_name(hunk)} matches {len(starts)} places "
            f"(lines {_line_numbers(starts)}); add context lines to make it unique",
        )
    ranked = sorted(starts, key=lambda s: abs(s - hint))
    if abs(ranked[0] - hint) == abs(ranked[1] - hint):
        raise EditApplyError(
            path,
            f"{_name(hunk)} matches lines "
            f"{_line_numbers(starts)} equally well; add context lines to make it unique",
        )
    return ranked[0]


def _apply_hunk(
    path: str, lines: list[str], hunk: Hunk, offset: int, floor: int
) -> tuple[list[str], int, int]:
    """Apply one hunk; return the new lines, the new offset and the end of the applied region."""
    hint = None if hunk.old_start is None else max(hunk.old_start - 1 + offset, 0)
    old = list(hunk.old_lines)
    if not old:
        at = len(lines) if hint is None else min(hint, len(lines))
        new = list(hunk.new_lines)
        return lines[:at] + new + lines[at:], offset + len(new), at + len(new)
    found = find_block(lines, old)
    if found is None:
        raise EditApplyError(
            path,
            f"{_name(hunk)} does not match the file: its context "
            "and '-' lines must copy the current lines exactly",
            closest_snippet(lines, old),
        )
    start = _choose(path, hunk, found.starts, hint, floor)
    shift: IndentShift = found.shifts[found.starts.index(start)]
    window = lines[start : start + len(old)]
    out: list[str] = []
    k = 0
    for hl in hunk.lines:
        if hl.kind == " ":
            out.append(window[k])
            k += 1
        elif hl.kind == "-":
            k += 1
        else:
            out.append(shift.apply(hl.text))
    new_lines = lines[:start] + out + lines[start + len(old):]
    if hunk.old_start is not None:
        offset = start - (hunk.old_start - 1) + len(out) - len(old)
    return new_lines, offset, start + len(out)


def _unified_diff(op: UnifiedDiff, current: str | None) -> str:
    if op.new_file:
        if current is not None and current.strip():
            raise EditApplyError(op.path, "the diff creates this file but it already exists")
        added = [ln for h in op.hunks for ln in h.new_lines]
        return "\n".join(added) + "\n" if added else ""
    if current is None:
        raise EditApplyError(op.old_path or op.path, "the diff edits a file that does not exist")
    text = _Text.of(current)
    lines = list(text.lines)
    offset = 0
    floor = 0
    for hunk in op.hunks:
        lines, offset, floor = _apply_hunk(op.path, lines, hunk, offset, floor)
    return text.render(lines)


def _whole_file(op: WholeFile, current: str | None) -> str:
    if current is None or not current:
        return op.content
    text = _Text.of(current)
    return text.render(_lines(op.content))


def apply_edits(ops: Sequence[EditOp], read: Reader) -> dict[str, str | None]:
    """New content of every file the edits touch (``None`` = deleted), computed in memory.

    ``read(path)`` gives a file's current text, or ``None`` if it does not exist.
    Several operations on one file compose in order. Raises
    :class:`EditApplyError` (with the closest lines of the file) when an edit
    does not match.
    """
    state: dict[str, str | None] = {}

    def current(path: str) -> str | None:
        return state[path] if path in state else read(path)

    for op in ops:
        if isinstance(op, SearchReplace):
            state[op.path] = _search_replace(op, current(op.path))
        elif isinstance(op, WholeFile):
            state[op.path] = _whole_file(op, current(op.path))
        elif isinstance(op, DeleteFile):
            if current(op.path) is None:
                raise EditApplyError(op.path, "cannot delete: the file does not exist")
            state[op.path] = None
        elif isinstance(op, UnifiedDiff):
            if op.deleted_file:
                if current(op.path) is None:
                    raise EditApplyError(op.path, "the diff deletes a file that does not exist")
                state[op.path] = None
            elif op.old_path is not None:
                if current(op.path) is not None:
                    raise EditApplyError(
                        op.path, f"cannot rename {op.old_path} here: the file already exists"
                    )
                state[op.path] = _unified_diff(op, current(op.old_path))
                state[op.old_path] = None
            else:
                state[op.path] = _unified_diff(op, current(op.path))
        else:  # pragma: no cover - exhaustive
            raise TypeError(f"unknown edit operation {op!r}")
    return state
