"""Git workspaces on the target repository: worktrees, deterministic phase commits,
compare-and-set ref moves and throw-away exports."""

from autopack.workspace.git import Git, LogEntry, RefMovedAt
from autopack.workspace.worktree import (
    CANDIDATE_REF_PREFIX,
    branch_log,
    changed_paths,
    commit_candidate,
    create_branch,
    diff,
    ensure_worktree,
    export_tree,
    keep_ref,
    remove_worktree,
    update_ref_cas,
    write_changes,
)

__all__ = [
    "CANDIDATE_REF_PREFIX",
    "Git",
    "LogEntry",
    "RefMovedAt",
    "branch_log",
    "changed_paths",
    "commit_candidate",
    "create_branch",
    "diff",
    "ensure_worktree",
    "export_tree",
    "keep_ref",
    "remove_worktree",
    "update_ref_cas",
    "write_changes",
]
