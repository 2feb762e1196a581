"""The demo plan on the prod profile: Redis broker, PostgreSQL, one worker process per queue,
submitted with `autopack run --wait` through the API — the same end state as the local profile."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from autopack.procs import ProcessGroup, free_port, wait_http, worker_argv
from autopack.settings import ROOT
from autopack.workspace.worktree import branch_log
from tasks.app import QUEUES
from tests.integration.prod import prod_env
from tests.conftest import redis_db

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def test_demo_plan_on_redis_and_postgres(tmp_path: Path, redis_url: str, pg_url: str, demo_repo: Path) -> None:
    broker = redis_db(1)
    redis.Redis.from_url(broker).flushdb()
    port = free_port()
    env = prod_env(tmp_path, broker, pg_url, port, AUTOPACK_LLM_MODE="replay",
                   AUTOPACK_CASSETTE=str(ROOT / "examples" / "demo" / "cassette.jsonl"))

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "autopack.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)

    assert cli("migrate").returncode == 0
    added = cli("project", "add", "demo", str(demo_repo))
    assert added.returncode == 0, added.stderr
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    try:
        group.start("web", [sys.executable, "-m", "autopack.cli", "web", "--port", str(port)])
        for q in QUEUES:
            group.start(f"worker-{q}", worker_argv(q, q, "prefork", 1))
        wait_http(f"http://127.0.0.1:{port}/health", 60, group)
        proc = cli("run", str(ROOT / "examples" / "demo" / "plan.yaml"), "--project", "demo", "--wait", timeout=300)
        # Events are mirrored to the Redis Stream (once each) by the dispatcher.
        r = redis.Redis.from_url(broker)
        deadline = time.monotonic() + 30
        while True:
            mirrored = [f for _, f in r.xrange("autopack:events")]
            types = {f[b"type"] for f in mirrored}
            seqs = sorted(int(f[b"seq"]) for f in mirrored)
            if (b"run.finished" in types and seqs == list(range(1, len(seqs) + 1))) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        group.stop()
        redis.Redis.from_url(broker).flushdb()
    logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + logs
    assert "DONE_SUCCESS" in proc.stdout
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run ") and "queued" in line)
    log = branch_log(demo_repo, "main", f"autopack/{run_id}")
    assert [e["trailers"]["Autopack-Phase"] for e in log] == ["stats", "parse", "cli"]
    assert [e["trailers"]["Autopack-Attempt"] for e in log] == ["2", "2", "1"]
    # One run on this broker: every one of its events is in the stream exactly once.
    assert {f[b"run"].decode() for f in mirrored} == {run_id}
    seqs = [int(f[b"seq"]) for f in mirrored]  # in the stream's order: each step's worker sent its own
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 20
    assert b"run.finished" in {f[b"type"] for f in mirrored}
