"""`autopack up` starts web, workers and beat as child processes; a run submitted with
`autopack run --wait` finishes; `celery inspect` reaches the workers through the filesystem
transport's control folder; Ctrl-C (SIGINT) stops every child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopack.procs import free_port, wait_http
from autopack.settings import ROOT
from tests.integration.flower import flower_workers

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    parents: dict[int, int] = {}
    for line in out.splitlines():
        c, p = line.split()
        parents[int(c)] = int(p)
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = {c for c, p in parents.items() if p in frontier}
        found |= nxt
        frontier = nxt
    return found


def test_up_runs_a_plan_and_stops_on_ctrl_c(tmp_path: Path, demo_repo: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env.update(
        AUTOPACK_STATE_DIR=str(tmp_path / "state"),
        AUTOPACK_LLM_MODE="replay",
        AUTOPACK_CASSETTE=str(ROOT / "examples" / "demo" / "cassette.jsonl"),
        AUTOPACK_API_URL=f"http://127.0.0.1:{port}",
    )
    cli = [sys.executable, "-m", "autopack.cli"]
    log = tmp_path / "up.log"

    def ignore_sigint() -> None:  # as a shell's background job starts: Ctrl-C must work all the same
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    up = subprocess.Popen([*cli, "up", "--port", str(port)], env=env, cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                          preexec_fn=ignore_sigint)  # noqa: PLW1509 - a test of signal handling
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60)
        assert subprocess.run([*cli, "project", "add", "demo", str(demo_repo)], env=env, capture_output=True).returncode == 0
        run = subprocess.run([*cli, "run", str(ROOT / "examples/demo/plan.yaml"), "--wait"], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "DONE_SUCCESS" in run.stdout
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--json", "--timeout", "5"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        replies = json.loads(ping.stdout.strip().splitlines()[-1])
        assert {node.split("@")[0] for node in replies} == {"build", "ci", "events"}
        assert all(reply == {"ok": "pong"} for reply in replies.values())
        children = _children(up.pid)
        assert len(children) >= 5  # web, 3 workers, beat (and pool children)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
    assert up.returncode == 0, log.read_text()[-2000:]
    deadline = time.monotonic() + 10
    alive = set(children)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if os.path.exists(f"/proc/{p}") and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()}
        time.sleep(0.1)
    assert not alive, f"children still running after Ctrl-C: {alive}"


def test_sigterm_stops_every_child_too(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env["AUTOPACK_STATE_DIR"] = str(tmp_path / "state")
    up = subprocess.Popen([sys.executable, "-m", "autopack.cli", "up", "--port", str(port)], env=env, cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flower_port = free_port()
    flower = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60)
        children = _children(up.pid)
        assert len(children) >= 5
        # Flower on the local profile: the filesystem transport's control folder carries its
        # broadcasts, so it lists the workers of every queue.
        flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "flower", "--address=127.0.0.1", f"--port={flower_port}"],
                                  env={**env, "FLOWER_BASIC_AUTH": "ops:pw"}, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers = flower_workers(flower_port, "ops:pw")
        served = {q["name"] for info in workers.values() for q in info.get("active_queues", [])}
        assert served == {"build", "ci", "audit", "agents", "events", "maintenance"}, workers
    finally:
        if flower is not None:
            flower.terminate()
            flower.wait(timeout=30)
        up.terminate()
        up.wait(timeout=60)
    deadline = time.monotonic() + 10
    alive = set(children)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if os.path.exists(f"/proc/{p}") and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()}
        time.sleep(0.1)
    assert not alive, f"children left running after SIGTERM: {alive}"
