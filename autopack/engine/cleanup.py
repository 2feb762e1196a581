"""Cleanup (beat's maintenance queue, and ``autopack cleanup``): the worktrees of finished runs.

Each run builds in a worktree of the project's repository under the state folder. Once the run is
over nothing needs it: its branch holds the completed phases, and every candidate commit is anchored
under ``refs/autopack/<run>/`` (a worktree can always be made again from the repository). Left
alone, every run would keep a full checkout on disk and a registration in the repository's
``.git/worktrees``. A run's worktree is removed once the run has been over for the retention period.

Steps also make folders in the system's temp folder (a test run's sandbox, a tree exported for it,
a private index); a step removes its own, but a worker killed mid-step (SIGKILL, the OOM killer)
leaves them behind. Those no step has touched for longer than any step may run are removed too.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from autopack.db.models import Project, Run, as_utc
from autopack.db.session import session_scope
from autopack.errors import GitError
from autopack.sandbox._workspace import remove_run_dir
from autopack.settings import Settings
from autopack.states import RUN_TERMINAL
from autopack.workspace import worktree as wt

log = logging.getLogger("autopack.cleanup")


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)  # run ids whose worktree was removed
    kept: int = 0  # worktrees of runs still going or over for less than the retention
    unknown: list[str] = field(default_factory=list)  # folders naming no run of this database: left alone
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"removed": self.removed, "kept": self.kept, "unknown": self.unknown, "failed": self.failed}


def remove_finished_worktrees(db_url: str, worktrees_dir: Path, older_than_s: float, now: datetime | None = None) -> CleanupReport:
    """Remove the worktree of every run that ended more than ``older_than_s`` seconds ago."""
    now = now or datetime.now(timezone.utc)
    report = CleanupReport()
    if not worktrees_dir.is_dir():
        return report
    folders = {p.name: p for p in worktrees_dir.iterdir() if p.is_dir() and not p.is_symlink()}
    if not folders:
        return report
    with session_scope(db_url) as s:
        rows = s.execute(
            select(Run.id, Run.state, Run.finished_at, Project.repo_path).join(Project, Project.id == Run.project_id)
            .where(Run.id.in_(list(folders)))
        ).all()
    known = {r.id: r for r in rows}
    report.unknown = sorted(set(folders) - set(known))
    cutoff = now - timedelta(seconds=older_than_s)
    terminal = {s.value for s in RUN_TERMINAL}
    for run_id in sorted(known):
        r = known[run_id]
        finished = as_utc(r.finished_at)
        if r.state not in terminal or finished is None or finished > cutoff:
            report.kept += 1
            continue
        try:
            _remove(Path(r.repo_path), folders[run_id])
            report.removed.append(run_id)
        except (GitError, OSError) as exc:
            log.warning("could not remove the worktree of run %s: %s", run_id, exc)
            report.failed.append(run_id)
    return report


def _remove(repo: Path, path: Path) -> None:
    """Remove the worktree and its registration; if the repository itself is gone, the folder."""
    if (repo / ".git").exists() or (repo / "HEAD").exists():
        wt.remove_worktree(repo, path)
    if path.exists():  # not a worktree of that repository (any more): only our own folder goes
        shutil.rmtree(path)


# The folders steps make with ``tempfile`` (sandbox runs, exported trees, private indexes, diffs).
TEMP_PREFIXES = ("autopack-sandbox-", "autopack-tree-", "autopack-probe-", "autopack-index-", "autopack-diff-", "autopack-export-")


def remove_stale_temp(temp_dir: Path, older_than_s: float, now: float | None = None) -> list[str]:
    """Remove the folders of ``temp_dir`` that steps make (by name), owned by this user and not
    modified for ``older_than_s`` seconds: what a killed worker left. Returns their names. A folder
    that cannot be removed is logged and left."""
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        entries = list(os.scandir(temp_dir))
    except OSError as exc:
        log.warning("could not list %s: %s", temp_dir, exc)
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIXES) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_uid != os.getuid() or now - st.st_mtime < older_than_s:
                continue
            remove_run_dir(Path(entry.path))
        except Exception as exc:  # noqa: BLE001 - one folder that resists does not stop the others
            log.warning("could not remove %s: %s", entry.path, exc)
            continue
        if not os.path.lexists(entry.path):
            removed.append(entry.name)
    return removed


def stale_temp_age_s(settings: Settings) -> float:
    """How long a step's temp folder may go untouched before it counts as left behind: longer than
    any queue lets a step run (its hard time limit), plus the worktree retention as a margin."""
    longest = max(settings.build_time_limit, settings.ci_time_limit, settings.audit_time_limit,
                  settings.agents_time_limit, settings.default_time_limit)
    return float(longest) + settings.worktree_retention_s


def remove_left_temp(settings: Settings) -> list[str]:
    """What beat's cleanup and ``autopack cleanup`` remove of the system temp folder: the folders
    killed workers' steps left there, once no step can still be using them."""
    return remove_stale_temp(Path(tempfile.gettempdir()), stale_temp_age_s(settings))
