"""A worker that always dies at the same point ends its phase FAILED after the delivery cap (never
a loop); a worker frozen past its lease (SIGSTOP) and continued after another worker took over
(SIGCONT) changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from autopack.db.models import Event, StepRow
from autopack.db.session import session_scope
from autopack.workspace.git import Git
from tests.chaos.cluster import Cluster, assert_invariants, base_env

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_a_step_that_kills_its_worker_every_time_fails_the_phase(tmp_path: Path, demo_repo: Path) -> None:
    env = {"AUTOPACK_CRASH_AT": "after_commit", "AUTOPACK_CRASH_DIR": str(tmp_path / "crashes"), "AUTOPACK_CRASH_TIMES": "1000"}
    cluster = Cluster(tmp_path / "state", base_env(tmp_path / "state"))
    try:
        cluster.start("solo", env)
        cluster.register(demo_repo)
        run_id = cluster.submit()

        def revive() -> None:
            if not cluster.worker_alive():
                cluster.start_worker("solo", env)

        state = cluster.wait_terminal(run_id, timeout=150, on_tick=revive)
    finally:
        cluster.stop()
    assert state == "DONE_FAILED_TIER_BLOCKED"
    crashes = len(list((tmp_path / "crashes").iterdir()))
    assert crashes == 4  # AUTOPACK_MAX_DELIVERIES in base_env: then the step is given up
    with session_scope(cluster.db_url) as s:
        given_up = s.scalars(select(StepRow).where(StepRow.run_id == run_id, StepRow.outcome == "given_up")).all()
        assert [(r.name, r.deliveries) for r in given_up] == [("build", 5)]
    figures = assert_invariants(cluster.db_url, demo_repo, run_id)
    assert figures["commits"] == 0


def _stopped(pid: int) -> bool:
    try:
        return "\nState:\tT" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_frozen_worker_resumed_after_takeover_changes_nothing(tmp_path: Path, demo_repo: Path) -> None:
    pause = {"AUTOPACK_PAUSE_AT": "after_commit", "AUTOPACK_CRASH_DIR": str(tmp_path / "pauses")}
    cluster = Cluster(tmp_path / "state", base_env(tmp_path / "state"))
    try:
        cluster.start("solo", pause)
        cluster.register(demo_repo)
        run_id = cluster.submit()
        frozen = cluster.procs["worker"]
        deadline = time.monotonic() + 60
        while not _stopped(frozen.pid):
            assert time.monotonic() < deadline, "the worker never reached its pause point"
            time.sleep(0.1)
        # Another worker takes the step over once the frozen one's lease expires, and finishes the run.
        cluster.start_worker("solo", name="worker2")
        assert cluster.wait_terminal(run_id, timeout=120) == "DONE_SUCCESS"
        git = Git(demo_repo)
        head = git.rev_parse(f"refs/heads/autopack/{run_id}")
        with session_scope(cluster.db_url) as s:
            events = s.scalar(select(func.count()).select_from(Event).where(Event.run_id == run_id))
        cluster.kill("worker2")
        # Now the frozen worker wakes up, still believing it holds the step.
        import os
        import signal

        os.kill(frozen.pid, signal.SIGCONT)
        log = tmp_path / "state" / "worker.log"
        deadline = time.monotonic() + 30
        while "this worker's result is discarded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        cluster.stop()
    assert git.rev_parse(f"refs/heads/autopack/{run_id}") == head
    with session_scope(cluster.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.run_id == run_id)) == events
    figures = assert_invariants(cluster.db_url, demo_repo, run_id)
    assert figures["commits"] == 3
