"""Shared benchmark helpers: a trivial target repository, plans, a prod-profile cluster of real
processes (web + Celery workers) on a dedicated Redis database and a fresh PostgreSQL database,
and waiting for runs. Every process started is ended by its id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autopack.procs import free_port, wait_http  # noqa: E402

REDIS_DB = 13
REDIS = f"redis://127.0.0.1:6379/{REDIS_DB}"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

JUNIT_SCRIPT = '''import sys
path = sys.argv[sys.argv.index("--junitxml") + 1]
open(path, "w").write('<testsuite tests="1"><testcase classname="tests.test_ok" name="test_ok" file="tests/test_ok.py"/></testsuite>')
'''


def make_repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "junit.py").write_text(JUNIT_SCRIPT)
    (folder / "README.md").write_text("benchmark target\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(argv, cwd=folder, env=env, check=True)
    return folder


def plan(phases: int, project: str = "bench") -> dict[str, Any]:
    return {
        "project": project,
        "test_command": ["{python}", "junit.py"],
        "tiers": [{"id": "t", "phases": [
            {"id": f"p{i}", "goal": f"Write out/p{i}.txt.", "category": "feature", "complexity": "low",
             "scope": [f"out/p{i}.txt"], "deliverables": [f"out/p{i}.txt"]} for i in range(phases)]}],
    }


class Cluster:
    def __init__(self, workdir: Path, workers: list[tuple[str, str, str, int]], sandbox: str = "none") -> None:
        import psycopg
        import redis

        self.workdir = workdir
        self.db = f"autopack_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        redis.Redis.from_url(REDIS).flushdb()
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
        self.env.update(
            AUTOPACK_PROFILE="prod", AUTOPACK_STATE_DIR=str(workdir / "state"), AUTOPACK_REDIS_URL=REDIS,
            AUTOPACK_POSTGRES_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db}",
            AUTOPACK_LLM_SCRIPT=str(ROOT / "bench" / "_model.py"), AUTOPACK_SANDBOX=sandbox,
            AUTOPACK_API_URL=f"http://127.0.0.1:{self.port}",
        )
        self.workers = workers
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def db_url(self) -> str:
        return self.env["AUTOPACK_POSTGRES_URL"]

    def cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "autopack.cli", *args], env=self.env, check=True, capture_output=True, cwd=ROOT)

    def start(self) -> None:
        self.cli("migrate")
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._spawn("web", [sys.executable, "-m", "autopack.cli", "web", "--port", str(self.port)], logs)
        for name, queues, pool, conc in self.workers:
            self._spawn(name, [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queues, "-P", pool, "-c", str(conc),
                               "-n", f"{name}@%h", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"], logs)
        wait_http(f"http://127.0.0.1:{self.port}/health", 60)

    def _spawn(self, name: str, argv: list[str], logs: Path) -> None:
        self.procs[name] = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=open(logs / f"{name}.log", "wb"),  # noqa: SIM115
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def submit(self, body: dict[str, Any]) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/runs", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return str(json.loads(resp.read())["id"])

    def states(self, run_ids: list[str]) -> dict[str, str]:
        from autopack.db.models import Run
        from autopack.db.session import session_scope

        with session_scope(self.db_url) as s:
            return {r.id: r.state for r in s.query(Run).filter(Run.id.in_(run_ids))}

    def wait(self, run_ids: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(run_ids)
            if all(v.startswith("DONE_") or v == "CANCELLED" for v in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
        parents = {int(c): int(p) for c, p in (line.split() for line in out.splitlines())}
        roots = {p.pid for n, p in self.procs.items() if n != "web"}
        found, frontier = set(roots), set(roots)
        while frontier:
            frontier = {c for c, p in parents.items() if p in frontier} - found
            found |= frontier
        return sorted(found)

    def stop(self) -> None:
        import psycopg
        import redis

        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        from autopack.db.session import get_engine

        get_engine(self.db_url).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        redis.Redis.from_url(REDIS).flushdb()


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total
