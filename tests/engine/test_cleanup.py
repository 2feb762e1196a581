"""Cleanup of finished runs' worktrees (autopack/engine/cleanup.py), on a real repository: a run's
worktree goes once the run has been over for the retention, with its registration in the
repository; running and recently finished runs keep theirs; folders naming no known run stay."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from autopack.db.models import Run
from autopack.db.session import session_scope
from autopack.engine.cleanup import remove_finished_worktrees, remove_stale_temp, stale_temp_age_s
from autopack.engine.leases import now_utc
from autopack.settings import Settings
from autopack.workspace import worktree as wt
from tests.engine.harness import demo_plan, make_services, register, submit


def _registered(repo: Path) -> list[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def _run_with_worktree(settings: Settings, repo: Path, state: str, finished_ago_s: float | None) -> tuple[str, Path]:
    services, _ = make_services(settings, lambda req: "")
    run_id = submit(services, demo_plan())
    with session_scope(settings.db_url) as s:
        s.execute(update(Run).where(Run.id == run_id).values(
            state=state, finished_at=None if finished_ago_s is None else now_utc() - timedelta(seconds=finished_ago_s)))
    path = wt.ensure_worktree(repo, settings.worktrees_dir / run_id, "main")
    (path / "left-behind.txt").write_text("untracked work of the run\n")
    return run_id, path


def test_only_the_worktrees_of_runs_over_for_the_retention_are_removed(local_settings: Settings, demo_repo: Path) -> None:
    register(local_settings, demo_repo)
    old_done, old_done_path = _run_with_worktree(local_settings, demo_repo, "DONE_SUCCESS", 7200)
    old_failed, old_failed_path = _run_with_worktree(local_settings, demo_repo, "DONE_FAILED_TIER_BLOCKED", 4000)
    recent, recent_path = _run_with_worktree(local_settings, demo_repo, "CANCELLED", 60)
    running, running_path = _run_with_worktree(local_settings, demo_repo, "RUNNING", None)
    stranger = local_settings.worktrees_dir / "not-a-run-of-ours"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("x")
    assert {str(p) for p in (old_done_path, old_failed_path, recent_path, running_path)} <= set(_registered(demo_repo))

    report = remove_finished_worktrees(local_settings.db_url, local_settings.worktrees_dir, 3600)

    assert sorted(report.removed) == sorted([old_done, old_failed])
    assert report.kept == 2 and report.unknown == ["not-a-run-of-ours"] and report.failed == []
    assert not old_done_path.exists() and not old_failed_path.exists()
    assert recent_path.is_dir() and running_path.is_dir() and (stranger / "keep.txt").exists()
    registered = _registered(demo_repo)
    assert str(old_done_path) not in registered and str(old_failed_path) not in registered
    assert str(recent_path) in registered and str(running_path) in registered
    # The run's branch and the repository itself are untouched; a second pass has nothing to do.
    assert subprocess.run(["git", "status", "--porcelain"], cwd=demo_repo, capture_output=True, text=True, check=True).stdout == ""
    again = remove_finished_worktrees(local_settings.db_url, local_settings.worktrees_dir, 3600)
    assert again.removed == [] and again.kept == 2


def test_a_worktree_whose_repository_is_gone_is_removed_as_a_folder(local_settings: Settings, demo_repo: Path, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "moved-away"
    register(local_settings, demo_repo)
    run_id, path = _run_with_worktree(local_settings, demo_repo, "DONE_SUCCESS", 7200)
    shutil.move(str(demo_repo), str(moved))  # the user moved or deleted the project's repository
    report = remove_finished_worktrees(local_settings.db_url, local_settings.worktrees_dir, 3600)
    assert report.removed == [run_id] and not path.exists()


def test_nothing_to_clean(local_settings: Settings) -> None:
    assert remove_finished_worktrees(local_settings.db_url, local_settings.worktrees_dir / "none", 0).as_dict() == {
        "removed": [], "kept": 0, "unknown": [], "failed": []}


def test_a_retention_of_zero_removes_every_finished_runs_worktree(local_settings: Settings, demo_repo: Path) -> None:
    register(local_settings, demo_repo)
    run_id, path = _run_with_worktree(local_settings, demo_repo, "DONE_SUCCESS", 1)
    assert remove_finished_worktrees(local_settings.db_url, local_settings.worktrees_dir, 0).removed == [run_id]
    assert not path.exists()


# -- the temp folders of killed workers' steps ------------------------------------------------------


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_temp_folders_a_killed_worker_left_are_removed_once_no_step_can_use_them(tmp_path: Path) -> None:
    """A worker killed mid-step leaves its sandbox run folder, exported tree or private index in the
    temp folder. Ours (by name and owner) untouched for longer than the limit go, also with files
    the code under test made unwritable; recent ones, other programs' folders, files and links stay."""
    old_sandbox = tmp_path / "autopack-sandbox-abc"
    (old_sandbox / "workspace" / "locked").mkdir(parents=True)
    (old_sandbox / "workspace" / "locked" / "f.txt").write_text("x")
    (old_sandbox / "workspace" / "locked").chmod(0o500)
    old_tree = tmp_path / "autopack-tree-def"
    (old_tree / "tree").mkdir(parents=True)
    for p in (old_sandbox / "workspace", old_sandbox, old_tree):
        _aged(p, 7200)
    recent = tmp_path / "autopack-export-ghi"
    recent.mkdir()
    other = tmp_path / "pytest-of-someone"
    other.mkdir()
    _aged(other, 7200)
    a_file = tmp_path / "autopack-index-file"
    a_file.write_text("not a folder")
    _aged(a_file, 7200)
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "autopack-diff-link"
    link.symlink_to(target)
    _aged(link, 7200)

    removed = remove_stale_temp(tmp_path, 3600)

    assert sorted(removed) == ["autopack-sandbox-abc", "autopack-tree-def"]
    assert not old_sandbox.exists() and not old_tree.exists()
    assert recent.is_dir() and other.is_dir() and a_file.is_file() and link.is_symlink() and target.is_dir()
    assert remove_stale_temp(tmp_path / "missing", 3600) == []  # no temp folder: nothing to do, no error


def test_a_step_temp_folder_counts_as_left_only_after_the_longest_time_limit() -> None:
    settings = Settings(ci_time_limit=5000, build_time_limit=10, worktree_retention_s=60)
    assert stale_temp_age_s(settings) == 5060
