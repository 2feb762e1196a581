"""Builder edits: parse them, apply them in memory, govern what they may touch."""

from autopack.edits.apply import apply_edits
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

__all__ = [
    "DeleteFile",
    "EditOp",
    "EditPolicy",
    "Hunk",
    "HunkLine",
    "SearchReplace",
    "UnifiedDiff",
    "WholeFile",
    "apply_edits",
    "check_changes",
    "check_paths",
    "default_protected",
    "govern",
    "normalize_path",
    "parse_edits",
]
