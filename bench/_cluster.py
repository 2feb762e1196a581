"""What the benchmarks share: a trivial target repository, plans for it, and a prod-profile cluster
of real processes (web + Celery workers) on a dedicated Redis database and a fresh PostgreSQL
database, driven through the HTTP API.

Every process the cluster starts runs in its own session and is ended by its id (SIGTERM to the
leader, then SIGKILL to that leader's process group); the database is dropped and the Redis
database flushed when the cluster stops, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable

REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TERMINAL_PREFIXES = ("DONE_", "CANCELLED")

# The target's whole test suite, in POSIX sh with builtins only (one process, no fork: a Python stub
# costs ~15 ms of interpreter start per run, which is not orchestration): accepts what the engine
# appends, writes one test case to the JUnit path it is given (after ``--junitxml``), failing when a
# phase's output file says WRONG.
JUNIT_STUB = r"""path=autopack-junit.xml
while [ $# -gt 0 ]; do
  if [ "$1" = --junitxml ] && [ $# -gt 1 ]; then path=$2; shift; fi
  shift
done
wrong=
for f in out/*.txt; do
  [ -f "$f" ] || continue
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in *WRONG*) wrong="${wrong:+$wrong, }$f"; break ;; esac
  done < "$f"
done
if [ -n "$wrong" ]; then
  n=1; failure="<failure message=\"wrong content in $wrong\">wrong content</failure>"
else
  n=0; failure=
fi
printf '%s' "<?xml version=\"1.0\"?><testsuite name=\"bench\" tests=\"1\" failures=\"$n\" errors=\"0\"><testcase classname=\"tests.test_ok\" name=\"test_ok\" file=\"tests/test_ok.py\" time=\"0\">$failure</testcase></testsuite>" > "$path"
"""
TEST_COMMAND = ["sh", "ok_tests.sh"]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
}


def say(line: str) -> None:
    print(line, flush=True)


def make_target(folder: Path, files: int = 0) -> Path:
    """A one-commit git repository on ``main`` whose test command is the JUnit stub, with
    ``files`` more source files (``src/pkg<k>/m<i>.py``, 500 per folder, 20 lines each)."""
    folder.mkdir(parents=True)
    (folder / "ok_tests.sh").write_text(JUNIT_STUB)
    for i in range(files):
        pkg = folder / "src" / f"pkg{i // 500}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / f"m{i}.py").write_text(f"X{i} = {i}\n" * 20)
    (folder / "README.md").write_text("Benchmark target: phases write out/<phase>.txt.\n")
    env = {**os.environ, **GIT_ENV}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench target"]):
        subprocess.run(argv, cwd=folder, env=env, check=True, capture_output=True)
    return folder


def make_plan(phases: int, project: str = "bench", tiers: int = 1) -> dict[str, Any]:
    """``phases`` phases spread over ``tiers`` tiers; phase ``pN`` writes ``out/pN.txt``."""
    per = -(-phases // tiers)
    out = []
    for t in range(tiers):
        ids = range(t * per, min(phases, (t + 1) * per))
        if ids:
            out.append({"id": f"t{t}", "phases": [
                {"id": f"p{i}", "goal": f"Write out/p{i}.txt holding the phase id.", "category": "feature",
                 "complexity": "low", "scope": [f"out/p{i}.txt"], "deliverables": [f"out/p{i}.txt"]} for i in ids]})
    return {"project": project, "name": f"bench {phases} phases", "test_command": list(TEST_COMMAND), "tiers": out}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                          env={**os.environ, **GIT_ENV}).stdout


def branch_commits(repo: Path, branch: str, base: str = "main") -> list[dict[str, Any]]:
    """The commits of ``branch`` not on ``base`` (oldest first) with their trailers."""
    out = git(repo, "log", "--reverse", "--format=%H%x1f%(trailers:only,unfold)%x1e", f"{base}..{branch}")
    commits = []
    for rec in out.split("\x1e"):
        rec = rec.strip()
        if not rec:
            continue
        sha, _, trailer_text = rec.partition("\x1f")
        trailers: dict[str, list[str]] = {}
        for line in trailer_text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                trailers.setdefault(key.strip(), []).append(value.strip())
        commits.append({"sha": sha.strip(), "trailers": trailers})
    return commits


def tree_pids(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += children.get(pid, [])
    return sorted(seen)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _age_s(pid: int) -> float:
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def worker_processes(leader: int) -> list[int]:
    """A Celery worker's own processes: the leader and its pool children (forked, same command
    line), not the git or test processes they run for a moment — nor such a process caught between
    its fork and its exec, when it still has the worker's command line and (shared) pages: only
    processes older than a second count."""
    cmd = _cmdline(leader)
    return [p for p in tree_pids([leader]) if p == leader or (cmd and _cmdline(p) == cmd and _age_s(p) >= 1.0)]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Cluster:
    """web + Celery workers on the prod profile, one fresh PostgreSQL database, Redis DB ``REDIS_DB``.

    ``workers``: (name, queues, pool, concurrency). ``app``: the Celery app module the workers load
    (``tasks``, or a bench module that adds tasks to it). ``env``: extra ``AUTOPACK_*`` settings."""

    def __init__(self, workdir: Path, workers: list[tuple[str, str, str, int]], *, app: str = "tasks",
                 env: dict[str, str] | None = None, loglevel: str = "WARNING") -> None:
        self.workdir = workdir
        self.workers = workers
        self.app = app
        self.loglevel = loglevel
        self.db_name = f"autopack_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.pg_url = f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
        self.env.update(
            AUTOPACK_PROFILE="prod",
            AUTOPACK_STATE_DIR=str(workdir / "state"),
            AUTOPACK_REDIS_URL=REDIS_URL,
            AUTOPACK_POSTGRES_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}",
            AUTOPACK_API_URL=self.api,
            AUTOPACK_LLM_SCRIPT=str(BENCH / "_model.py"),
            AUTOPACK_SANDBOX="none",
            PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]),
        )
        self.env.update(env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.db_created = False
        self.redis = redis.Redis.from_url(REDIS_URL)

    # -------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Cluster:
        prev = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        self._prev_signals = prev

        def _raise(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for s in prev:
            signal.signal(s, _raise)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for s, h in self._prev_signals.items():
            signal.signal(s, h)

    def start(self) -> None:
        self.redis.flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.cli("migrate")
        self.spawn("web", [PYTHON, "-m", "autopack.cli", "web", "--port", str(self.port)])
        for name, queues, pool, conc in self.workers:
            self.spawn(name, self.worker_argv(name, queues, pool, conc))
        self.wait_health()
        self.wait_workers()

    def worker_argv(self, name: str, queues: str, pool: str, conc: int) -> list[str]:
        return [PYTHON, "-m", "celery", "-A", self.app, "worker", "-Q", queues, "-P", pool, "-c", str(conc),
                "-n", f"{name}@bench", "-E", "--loglevel", self.loglevel, "--without-mingle", "--without-gossip"]

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the leader and whatever it left in its session (pool children, test processes)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        self.procs.clear()
        if self.db_created:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self.db_created = False
        self.redis.flushdb()

    def failed(self) -> list[str]:
        return [f"{n} exited with {p.returncode}" for n, p in self.procs.items() if p.poll() is not None]

    def cli(self, *args: str) -> str:
        res = subprocess.run([PYTHON, "-m", "autopack.cli", *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"autopack {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res.stdout

    def wait_health(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.failed():
                raise RuntimeError("; ".join(self.failed()))
            try:
                status, body = self.http("GET", "/health")
                if status == 200 and body.get("ok"):
                    return
                last = str(body)
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"web did not become healthy: {last}")

    def wait_workers(self, timeout: float = 60) -> None:
        """Until every worker answers a ping (its consumers are up), so timing starts on a ready cluster."""
        from celery import Celery

        probe = Celery("bench-probe", broker=REDIS_URL)
        expected = {f"{name}@bench" for name, *_ in self.workers}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.failed():
                    raise RuntimeError("; ".join(self.failed()))
                replies = probe.control.ping(timeout=1.0) or []
                if expected <= {k for r in replies for k in r}:
                    return
            raise TimeoutError(f"workers did not answer: {sorted(expected)}")
        finally:
            probe.close()

    # -------------------------------------------------------------------------- API and database

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback URL we built
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def add_project(self, name: str, repo: Path) -> None:
        self.cli("project", "add", name, str(repo))

    def submit(self, plan: dict[str, Any]) -> str:
        status, body = self.http("POST", "/runs", plan)
        if status != 202:
            raise RuntimeError(f"POST /runs answered {status}: {body}")
        return str(body["id"])

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def states(self, run_ids: list[str]) -> dict[str, str]:
        return dict(self.sql("SELECT id, state FROM runs WHERE id = ANY(%s)", (run_ids,)))  # type: ignore[arg-type]

    def wait_terminal(self, run_ids: list[str], timeout: float, poll: float = 0.05) -> dict[str, str]:
        """The runs' states once all are terminal, or as they are when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(run_ids)
            if all(v.startswith(TERMINAL_PREFIXES) for v in states.values()) or time.monotonic() > deadline:
                return states
            if self.failed():
                raise RuntimeError("; ".join(self.failed()))
            time.sleep(poll)

    def worker_pids(self) -> dict[str, list[int]]:
        """Per worker: its leader and pool processes."""
        return {n: worker_processes(p.pid) for n, p in self.procs.items() if n != "web"}

    def worker_memory_kib(self) -> dict[str, tuple[int, int]]:
        """Per worker: (RSS, PSS) summed over its leader and pool processes."""
        return {n: (sum(rss_kib(p) for p in pids), sum(pss_kib(p) for p in pids)) for n, pids in self.worker_pids().items()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_terminal(state: str) -> bool:
    return state.startswith(TERMINAL_PREFIXES)


class TaskTap:
    """Collects Celery task events (the workers run with ``-E``) in a thread: per task name, the
    worker-side runtime of each successful task. ``runtimes()`` returns and clears them."""

    def __init__(self) -> None:
        import threading

        from celery import Celery

        self.app = Celery("bench-tap", broker=REDIS_URL)
        self.names: dict[str, str] = {}
        self.done: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="task-tap", daemon=True)

    def _loop(self) -> None:
        def received(ev: dict[str, Any]) -> None:
            self.names[ev["uuid"]] = ev.get("name", "?")

        def succeeded(ev: dict[str, Any]) -> None:
            with self.lock:
                self.done.append((self.names.pop(ev["uuid"], "?"), float(ev.get("runtime", 0.0))))

        with self.app.connection() as conn:
            recv = self.app.events.Receiver(conn, handlers={"task-received": received, "task-succeeded": succeeded})
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    for _ in recv.consume(limit=None, timeout=0.5, wakeup=False):
                        if self.stopping.is_set():
                            break
                except TimeoutError:
                    continue
                except OSError:
                    if self.stopping.is_set():
                        break
                    time.sleep(0.1)

    def __enter__(self) -> TaskTap:
        self.thread.start()
        self.ready.wait(10)
        time.sleep(0.3)  # the event queue is bound once the consumer is up
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.app.close()

    def runtimes(self) -> dict[str, list[float]]:
        with self.lock:
            done, self.done = self.done, []
        out: dict[str, list[float]] = {}
        for name, rt in done:
            out.setdefault(name, []).append(rt)
        return out


def loadavg() -> float:
    """The 1-minute load average (the benchmarks share the machine: figures are noisy above ~cores)."""
    return float(Path("/proc/loadavg").read_text().split()[0])
