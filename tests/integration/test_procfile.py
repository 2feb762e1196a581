"""`honcho start` with the Procfile brings up a working prod cluster against Redis and PostgreSQL:
a run submitted with `autopack run --wait` reaches DONE_SUCCESS, and Flower's API (basic auth)
lists the workers of every queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from autopack.procs import free_port, wait_http
from autopack.settings import ROOT
from tasks.app import QUEUES
from tests.integration.flower import flower_workers
from tests.conftest import redis_db

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def test_honcho_procfile_cluster(tmp_path: Path, redis_url: str, pg_url: str, demo_repo: Path) -> None:
    broker = redis_db(4)
    redis.Redis.from_url(broker).flushdb()
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        AUTOPACK_PROFILE="prod",
        AUTOPACK_STATE_DIR=str(tmp_path / "state"),
        AUTOPACK_REDIS_URL=broker,
        AUTOPACK_POSTGRES_URL=pg_url,
        AUTOPACK_LLM_MODE="replay",
        AUTOPACK_CASSETTE=str(ROOT / "examples" / "demo" / "cassette.jsonl"),
        AUTOPACK_API_URL=f"http://127.0.0.1:{port}",
        FLOWER_PORT=str(flower_port),
        FLOWER_BASIC_AUTH="ops:secret-for-test",
    )
    cli = [sys.executable, "-m", "autopack.cli"]
    assert subprocess.run([*cli, "migrate"], env=env, capture_output=True).returncode == 0
    assert subprocess.run([*cli, "project", "add", "demo", str(demo_repo)], env=env, capture_output=True).returncode == 0
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "start", "-p", str(port)],
                              env=env, stdout=open(tmp_path / "honcho.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60)
        run = subprocess.run([*cli, "run", str(ROOT / "examples/demo/plan.yaml"), "--project", "demo", "--wait"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "honcho.log").read_text()[-3000:]
        assert "DONE_SUCCESS" in run.stdout
        workers = flower_workers(flower_port, "ops:secret-for-test")
        served = {q["name"] for info in workers.values() for q in info.get("active_queues", [])}
        assert served >= set(QUEUES), (served, list(workers))
        assert {name.split("@")[0] for name in workers} >= {"build", "ci", "events"}
        # Without credentials Flower refuses.
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/api/workers", timeout=10)  # noqa: S310
        assert denied.value.code == 401
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        redis.Redis.from_url(broker).flushdb()
