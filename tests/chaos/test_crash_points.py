"""Kill a worker with SIGKILL at each named crash point of the phase pipeline, on the pool child
(prefork: the worker replaces it) and on the whole worker (solo pool: restarted by the test).
After each: the run ends DONE_SUCCESS in bounded time, one commit per completed phase, no phase
over its attempts, no gap in the events."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.engine.faults import POINTS
from tests.chaos.cluster import Cluster, assert_invariants, base_env

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


@pytest.mark.parametrize("pool", ["prefork", "solo"])
@pytest.mark.parametrize("point", POINTS)
def test_crash_point_recovers(tmp_path: Path, demo_repo: Path, point: str, pool: str) -> None:
    crash_dir = tmp_path / "crashes"
    cluster = Cluster(tmp_path / "state", base_env(tmp_path / "state"))
    worker_env = {"AUTOPACK_CRASH_AT": point, "AUTOPACK_CRASH_DIR": str(crash_dir)}
    try:
        cluster.start(pool, worker_env)
        cluster.register(demo_repo)
        run_id = cluster.submit()

        def revive() -> None:  # a whole worker that died is restarted, as a supervisor would
            if not cluster.worker_alive():
                cluster.start_worker(pool, worker_env)

        state = cluster.wait_terminal(run_id, timeout=150, on_tick=revive)
    finally:
        cluster.stop()
    assert list(crash_dir.iterdir()), f"the crash point {point} was never reached"
    assert state == "DONE_SUCCESS", (tmp_path / "state" / "worker.log").read_text()[-3000:]
    figures = assert_invariants(cluster.db_url, demo_repo, run_id)
    assert figures["commits"] == 3
