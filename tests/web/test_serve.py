"""`autopack web` serves with gunicorn on the prod profile (werkzeug's development server on the
local one): event streams and other requests at once, and a prompt, clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopack.config import load_config
from autopack.db.migrate import upgrade
from autopack.db.models import Project
from autopack.db.session import session_scope
from autopack.engine.runs import create_run
from autopack.plan import load_plan_file
from autopack.procs import free_port, wait_http
from autopack.settings import ROOT, Settings
from tests.integration.prod import prod_env

def _get(port: int, path: str, timeout: float = 10) -> tuple[int, dict[str, str]]:
    """Status and headers of a GET (the connection closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.getheaders())
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server started in its own session, its worker processes too, whatever state it is in."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.redis
@pytest.mark.postgres
def test_the_prod_web_process_is_gunicorn(tmp_path: Path, redis_url: str, pg_url: str) -> None:
    upgrade(pg_url)
    with session_scope(pg_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
        s.flush()
        run_id = create_run(s, load_plan_file(ROOT / "examples" / "demo" / "plan.yaml"), load_config(Settings().config_dir)).id
    port = free_port()
    env = prod_env(tmp_path, redis_url, pg_url, port)
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - the child's
    web = subprocess.Popen([sys.executable, "-m", "autopack.cli", "web", "--port", str(port), "--workers", "1", "--threads", "4"],
                           env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60)
        status, headers = _get(port, "/health")
        assert status == 200 and headers.get("Server", "").startswith("gunicorn")
        # A live run's event stream stays open in one thread while other requests are answered.
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stream.request("GET", f"/runs/{run_id}/events/stream?poll=0.2")
        events = stream.getresponse()
        assert events.status == 200 and events.getheader("Content-Type", "").startswith("text/event-stream")
        assert events.readline() == b"id: 1\n"
        for _ in range(3):
            assert _get(port, f"/runs/{run_id}")[0] == 200
        started = time.monotonic()
        web.send_signal(signal.SIGTERM)
        assert web.wait(timeout=30) == 0
        stopped_in = time.monotonic() - started
        stream.close()
    finally:
        _stop(web)
        log.close()
    text = (tmp_path / "web.log").read_text()
    assert "Using worker: gthread" in text and "Shutting down: Master" in text, text[-2000:]
    assert stopped_in < 15, stopped_in  # the open stream had its graceful 10 s, no more
    assert "development server" not in text


@pytest.mark.parametrize("server, answers", [(None, "Werkzeug/"), ("gunicorn", "gunicorn")])
def test_the_local_profile_keeps_werkzeug_and_either_can_be_asked_for(tmp_path: Path, server: str | None, answers: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env["AUTOPACK_STATE_DIR"] = str(tmp_path / "state")
    subprocess.run([sys.executable, "-m", "autopack.cli", "migrate"], env=env, check=True, capture_output=True)
    argv = [sys.executable, "-m", "autopack.cli", "web", "--port", str(port), "--workers", "1"] + (["--server", server] if server else [])
    web = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60)
        assert _get(port, "/health")[1].get("Server", "").startswith(answers)
    finally:
        _stop(web)
