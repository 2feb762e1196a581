"""Test support for the chaos suite: a small cluster of real processes (web, workers, beat) on the
demo plan with a replayed model, short leases and a fast reconciler; and the invariants every
scenario must leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from autopack.client import ApiClient
from autopack.db.models import BudgetReservation, Event, Phase, Run
from autopack.db.session import session_scope
from autopack.engine.ledger import charge_orphans
from autopack.plan import load_plan_text
from autopack.procs import free_port, wait_http, worker_argv
from autopack.settings import ROOT
from autopack.workspace.worktree import branch_log

QUEUES = "build,ci,audit,agents,events,maintenance"
PLAN = ROOT / "examples" / "demo" / "plan.yaml"


def base_env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env.update(
        AUTOPACK_STATE_DIR=str(state),
        AUTOPACK_LLM_MODE="replay",
        AUTOPACK_CASSETTE=str(ROOT / "examples" / "demo" / "cassette.jsonl"),
        AUTOPACK_LEASE_TTL_S="2",
        AUTOPACK_PICKUP_GRACE_S="6",
        AUTOPACK_RECONCILE_INTERVAL_S="1",
        AUTOPACK_MAX_DELIVERIES="4",
        # A killed pool process's task goes back to the broker after 1 s, not Celery's 10 s.
        AUTOPACK_WORKER_LOST_WAIT_S="1",
    )
    env.update(extra)
    return env


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        self.procs[name] = subprocess.Popen(argv, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, pool: str = "prefork", worker_env: dict[str, str] | None = None) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        cli = [sys.executable, "-m", "autopack.cli"]
        subprocess.run([*cli, "migrate"], env=self.env, check=True, capture_output=True)
        self._spawn("web", [*cli, "web", "--port", str(self.port)])
        self.start_worker(pool, worker_env)
        self._spawn("beat", [*cli, "beat", "--loglevel", "WARNING"])
        wait_http(f"http://127.0.0.1:{self.port}/health", 60)

    def start_worker(self, pool: str = "prefork", env: dict[str, str] | None = None, name: str = "worker") -> None:
        self.pool = pool
        self._spawn(name, worker_argv(name, QUEUES, pool, 1), {**self.env, **(env or {})})

    def worker_alive(self, name: str = "worker") -> bool:
        return self.procs[name].poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def stop(self) -> None:
        procs = [self.procs.pop(name) for name in list(self.procs)]
        for proc in procs:  # all at once: each shuts down in parallel with the others
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()

    def register(self, repo: Path) -> None:
        subprocess.run([sys.executable, "-m", "autopack.cli", "project", "add", "demo", str(repo)], env=self.env, check=True, capture_output=True)

    def submit(self) -> str:
        plan = load_plan_text(PLAN.read_text())
        return str(ApiClient(f"http://127.0.0.1:{self.port}").submit(plan)["id"])

    @property
    def db_url(self) -> str:
        if self.env.get("AUTOPACK_PROFILE") == "prod":
            return self.env["AUTOPACK_POSTGRES_URL"]
        return f"sqlite:///{self.state / 'autopack.sqlite'}"

    def run_state(self, run_id: str) -> str:
        with session_scope(self.db_url) as s:
            run = s.get(Run, run_id)
            return run.state if run is not None else "?"

    def wait_terminal(self, run_id: str, timeout: float = 120.0, on_tick=None) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            state = self.run_state(run_id)
            if state.startswith("DONE_") or state == "CANCELLED":
                return state
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} not terminal after {timeout}s (state {self.run_state(run_id)}); logs in {self.state}")


def assert_invariants(db_url: str, repo: Path, run_id: str) -> dict[str, int]:
    """The run is terminal, its branch holds exactly one commit per completed phase (the phase's
    accepted attempt), no phase used more than its attempts, and its events have no gap."""
    with session_scope(db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        assert run.state.startswith("DONE_") or run.state == "CANCELLED", run.state
        phases = s.scalars(select(Phase).where(Phase.run_id == run_id).order_by(Phase.index)).all()
        completed = {p.key: p.commit_sha for p in phases if p.state == "COMPLETE"}
        for p in phases:
            burned = [a for a in p.attempts if a.failure_class not in ("provider_error", "infrastructure")]
            assert len(burned) <= p.max_attempts, (p.key, len(burned), p.max_attempts)
            assert len(p.attempts) == p.attempts_used, (p.key, len(p.attempts), p.attempts_used)
        seqs = s.scalars(select(Event.seq).where(Event.run_id == run_id).order_by(Event.seq)).all()
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        branch, base_branch = run.branch, run.base_branch
        # Budgets: spent + reserved never exceeds the caps, and once the run is over the
        # reconciler leaves nothing reserved (a worker that died between a call and its settlement
        # left its reservation open until then; the reconciler charges it at its worst case).
        assert run.tokens_used + run.tokens_reserved <= run.token_cap
        assert run.cost_usd + run.cost_reserved_usd <= run.cost_cap_usd + 1e-9
        charge_orphans(s)
    with session_scope(db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        assert run.tokens_reserved == 0 and abs(run.cost_reserved_usd) < 1e-9, (run.tokens_reserved, run.cost_reserved_usd)
        # What was charged at its worst case stays inside the caps too.
        assert run.tokens_used <= run.token_cap and run.cost_usd <= run.cost_cap_usd + 1e-9
        assert not s.scalars(select(BudgetReservation).where(BudgetReservation.run_id == run_id, BudgetReservation.state == "open")).all()
    log = branch_log(repo, base_branch, branch)
    keys = [e["trailers"]["Autopack-Phase"] for e in log]
    assert sorted(keys) == sorted(completed), (keys, completed)
    assert len(keys) == len(set(keys)), keys
    assert {e["sha"] for e in log} == set(completed.values())
    return {"commits": len(log), "events": len(seqs)}
