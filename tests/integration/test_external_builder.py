"""An external Builder on the prod profile: Redis broker, PostgreSQL, one worker process per queue.
The phase waits; `autopack submit-edits` posts the edits through the API; the build, probe, audit
and decide steps run on the workers and the run ends DONE_SUCCESS with the phase's commit."""

from __future__ import annotations

import json
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

PLAN = {"project": "demo", "tiers": [{"id": "t", "phases": [{
    "id": "stats", "goal": "Add calc/stats.py with mean and median; both raise ValueError on empty input.",
    "category": "feature", "complexity": "low", "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"],
    "acceptance_tests": ["tests/test_stats.py"], "builder": "external"}]}]}


def test_external_builder_on_a_real_cluster(tmp_path: Path, redis_url: str, pg_url: str, demo_repo: Path) -> None:
    broker = redis_db(2)
    redis.Redis.from_url(broker).flushdb()
    port = free_port()
    env = prod_env(tmp_path, broker, pg_url, port, AUTOPACK_LLM_SCRIPT=str(ROOT / "examples" / "demo" / "model.py"))

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "autopack.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)

    def status(run_id: str) -> dict:  # type: ignore[type-arg]
        out = cli("status", run_id, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert cli("migrate").returncode == 0
    assert cli("project", "add", "demo", str(demo_repo)).returncode == 0
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    edits = tmp_path / "stats.edits"
    from autopack.engine.services import load_script

    edits.write_text(load_script(ROOT / "examples" / "demo" / "model.py").__globals__["STATS"])
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    try:
        group.start("web", [sys.executable, "-m", "autopack.cli", "web", "--port", str(port)])
        for q in QUEUES:
            group.start(f"worker-{q}", worker_argv(q, q, "prefork", 1))
        wait_http(f"http://127.0.0.1:{port}/health", 60, group)
        submitted = cli("run", str(plan), "--project", "demo")
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.split()[1]
        deadline = time.monotonic() + 90
        while True:
            view = status(run_id)
            attempts = view["tiers"][0]["phases"][0]["attempt_details"]
            if attempts and attempts[0]["state"] == "AWAITING_BUILDER":
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.3)
        shown = cli("status", run_id).stdout
        assert f"attempts 1/3 waiting for its external Builder: autopack submit-edits {run_id} stats FILE" in shown, shown
        sent = cli("submit-edits", run_id, "stats", str(edits), "--by", "integration-test")
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 120
        while not (view := status(run_id))["state"].startswith("DONE_"):
            assert time.monotonic() < deadline, view
            time.sleep(0.3)
    finally:
        group.stop()
        redis.Redis.from_url(broker).flushdb()
    logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert view["state"] == "DONE_SUCCESS", (view, logs)
    stats = view["tiers"][0]["phases"][0]
    assert stats["attempt_details"][0]["submission"]["by"] == "integration-test"
    assert stats["attempt_details"][0]["audit"]["verdict"] == "approve"
    log = branch_log(demo_repo, "main", f"autopack/{run_id}")
    assert [(e["trailers"]["Autopack-Phase"], e["sha"]) for e in log] == [("stats", stats["commit"])]
