"""Plain, immutable data for the edit operations parsed from a Builder answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

HunkLineKind: TypeAlias = Literal[" ", "-", "+"]


@dataclass(frozen=True)
class SearchReplace:
    """Replace the one block of ``path`` equal to ``search`` by ``replace``.

    An empty ``search`` on a file that does not exist creates it with ``replace``.
    Both texts end with a newline unless empty.
    """

    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class HunkLine:
    """One body line of a hunk: ``" "`` context, ``"-"`` removed, ``"+"`` added."""

    kind: HunkLineKind
    text: str


@dataclass(frozen=True)
class Hunk:
    """One ``@@`` hunk.

    ``old_start`` is the 1-based line of the file where the hunk's old lines
    begin according to its header (for a pure insertion: the line before which
    the new lines go); ``None`` when the header carried no numbers. It is only a
    hint: hunks are applied by content. ``source_line`` is the hunk header's line
    number in the answer, for error messages.
    """

    old_start: int | None
    lines: tuple[HunkLine, ...]
    source_line: int = 0

    @property
    def old_lines(self) -> tuple[str, ...]:
        """Context and removed lines, in order: what must be found in the file."""
        return tuple(hl.text for hl in self.lines if hl.kind != "+")

    @property
    def new_lines(self) -> tuple[str, ...]:
        """Context and added lines, in order: what the region becomes."""
        return tuple(hl.text for hl in self.lines if hl.kind != "-")


@dataclass(frozen=True)
class UnifiedDiff:
    """A unified diff for one file.

    ``path`` is the file the diff writes (for a deletion: the file deleted).
    ``old_path`` is set only for a rename (it differs from ``path``).
    ``mode`` records a ``new file mode`` / ``new mode`` value (``"120000"`` is a
    symlink, ``"160000"`` a gitlink) so that governance can refuse it.
    """

    path: str
    hunks: tuple[Hunk, ...]
    old_path: str | None = None
    new_file: bool = False
    deleted_file: bool = False
    mode: str | None = None


@dataclass(frozen=True)
class WholeFile:
    """Replace (or create) ``path`` with ``content``."""

    path: str
    content: str


@dataclass(frozen=True)
class DeleteFile:
    """Delete ``path``."""

    path: str


EditOp: TypeAlias = SearchReplace | UnifiedDiff | WholeFile | DeleteFile


def touched_paths(op: EditOp) -> tuple[str, ...]:
    """Every path an operation reads or writes (a rename touches both names)."""
    if isinstance(op, UnifiedDiff) and op.old_path is not None:
        return (op.path, op.old_path)
    return (op.path,)
