"""Finding a block of lines inside a file, exactly or tolerantly, and showing what came closest.

All functions work on lists of lines without line terminators.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal, Sequence

MatchKind = Literal["exact", "trailing-whitespace", "indentation"]


@dataclass(frozen=True)
class IndentShift:
    """How the file's indentation differs from the edit's: add or remove ``prefix``."""

    op: Literal["add", "remove"]
    prefix: str

    def apply(self, line: str) -> str:
        if not line.strip() or not self.prefix:
            return line
        if self.op == "add":
            return self.prefix + line
        if line.startswith(self.prefix):
            return line[len(self.prefix):]
        return line.lstrip(" \t")


NO_SHIFT = IndentShift("add", "")


@dataclass(frozen=True)
class Found:
    """Start indexes (0-based) where the wanted lines matched, all at one tolerance level."""

    kind: MatchKind
    starts: tuple[int, ...]
    shifts: tuple[IndentShift, ...]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_shift(file_window: Sequence[str], wanted: Sequence[str]) -> IndentShift | None:
    """The single indentation change mapping ``wanted`` onto ``file_window``, or None if inconsistent."""
    shift: IndentShift | None = None
    for have, want in zip(file_window, wanted):
        if not want.strip():
            continue
        hi, wi = _indent(have), _indent(want)
        if hi.endswith(wi):
            this = IndentShift("add", hi[: len(hi) - len(wi)])
        elif wi.endswith(hi):
            this = IndentShift("remove", wi[: len(wi) - len(hi)])
        else:
            return None
        if not this.prefix:
            this = NO_SHIFT
        if shift is None:
            shift = this
        elif shift != this:
            return None
    return shift or NO_SHIFT


def _starts(lines: Sequence[str], wanted: Sequence[str], rstrip: bool = False) -> list[int]:
    n = len(wanted)
    if n == 0 or n > len(lines):
        return []
    if not rstrip:
        target = list(wanted)
        keyed = list(lines)
    else:
        target = [w.rstrip() for w in wanted]
        keyed = [ln.rstrip() for ln in lines]
    first = target[0]
    return [
        s
        for s in range(len(lines) - n + 1)
        if keyed[s] == first and keyed[s : s + n] == target
    ]


def find_block(lines: Sequence[str], wanted: Sequence[str]) -> Found | None:
    """Find ``wanted`` in ``lines``: exactly, then ignoring trailing whitespace,
    then ignoring indentation (only where the indentation differs consistently).

    Returns every match at the first level that has any, or None.
    """
    if not wanted:
        return None
    exact = _starts(lines, wanted)
    if exact:
        return Found("exact", tuple(exact), tuple(NO_SHIFT for _ in exact))
    loose = _starts(lines, wanted, rstrip=True)
    if loose:
        return Found("trailing-whitespace", tuple(loose), tuple(NO_SHIFT for _ in loose))
    n = len(wanted)
    target = [w.strip() for w in wanted]
    stripped = [ln.strip() for ln in lines]
    starts: list[int] = []
    shifts: list[IndentShift] = []
    for s in range(len(lines) - n + 1):
        if stripped[s : s + n] != target:
            continue
        shift = indent_shift(lines[s : s + n], wanted)
        if shift is not None:
            starts.append(s)
            shifts.append(shift)
    if starts:
        return Found("indentation", tuple(starts), tuple(shifts))
    return None


def _overlap(window: Sequence[str], wanted_set: set[str]) -> int:
    return sum(1 for ln in window if ln.strip() and ln.strip() in wanted_set)


def closest_start(lines: Sequence[str], wanted: Sequence[str]) -> int | None:
    """Start index of the window of ``len(wanted)`` lines most similar to ``wanted``."""
    if not lines or not wanted:
        return None
    n = min(len(wanted), len(lines))
    target = "\n".join(w.strip() for w in wanted)
    stripped = [ln.strip() for ln in lines]
    positions = range(len(lines) - n + 1)
    if len(positions) > 400:
        wanted_set = {w.strip() for w in wanted if w.strip()}
        scored = sorted(positions, key=lambda s: -_overlap(stripped[s : s + n], wanted_set))
        positions = scored[:400]  # type: ignore[assignment]
    best_score = -1.0
    best = 0
    for s in positions:
        matcher = SequenceMatcher(None, target, "\n".join(stripped[s : s + n]), autojunk=False)
        if matcher.real_quick_ratio() <= best_score or matcher.quick_ratio() <= best_score:
            continue
        score = matcher.ratio()
        if score > best_score:
            best_score, best = score, s
    return best


def numbered(lines: Sequence[str], start: int, stop: int) -> str:
    """Lines ``start..stop`` (0-based, half-open) as ``  12 | text``."""
    width = len(str(stop))
    return "\n".join(f"{k + 1:>{width}} | {lines[k]}" for k in range(start, stop))


def closest_snippet(lines: Sequence[str], wanted: Sequence[str], margin: int = 1, cap: int = 40) -> str:
    """The lines of the file (numbered) that best resemble ``wanted``, with a little context."""
    if not lines:
        return "(the file is empty)"
    s = closest_start(lines, wanted)
    if s is None:
        return numbered(lines, 0, min(len(lines), cap))
    start = max(0, s - margin)
    stop = min(len(lines), s + len(wanted) + margin, start + cap)
    return numbered(lines, start, stop)
