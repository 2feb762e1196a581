"""Orchestration cost per phase on the prod profile (Redis + PostgreSQL) with a zero-latency
scripted model and a trivial test command, beside a bare Celery choreography with the same hops
per phase on the same broker and queues, in the same run. Goal: ratio <= 3x.

    .venv/bin/python bench/orchestration.py [--phases 20] [--sandbox none|bwrap]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import REDIS, ROOT, Cluster, make_repo, plan  # noqa: E402

WORKERS = [("build", "build,audit", "prefork", 1), ("ci", "ci", "prefork", 1), ("events", "events,agents,maintenance", "prefork", 1)]


def autopack_per_phase(phases: int, sandbox: str, work: Path) -> float:
    from sqlalchemy import select

    from autopack.db.models import Event
    from autopack.db.session import session_scope

    cluster = Cluster(work / f"ap-{sandbox}", WORKERS, sandbox=sandbox)
    try:
        cluster.start()
        repo = make_repo(work / f"repo-{sandbox}")
        cluster.cli("project", "add", "bench", str(repo))
        warm = cluster.submit(plan(2))  # warm the pools up (imports, connections)
        cluster.wait([warm], 120)
        run_id = cluster.submit(plan(phases))
        state = cluster.wait([run_id], 600)[run_id]
        assert state == "DONE_SUCCESS", state
        with session_scope(cluster.db_url) as s:
            evs = {e.type: e.created_at for e in s.scalars(select(Event).where(Event.run_id == run_id).order_by(Event.seq))
                   if e.type in ("run.running", "run.finished")}
        return (evs["run.finished"] - evs["run.running"]).total_seconds() / phases
    finally:
        cluster.stop()


def bare_per_phase(phases: int, work: Path) -> float:
    import redis

    env = {**os.environ, "BARE_BROKER": REDIS, "PYTHONPATH": str(ROOT / "bench")}
    procs = []
    for name, queues, pool, conc in [("build", "build,audit", "prefork", 1), ("ci", "ci", "prefork", 1), ("events", "events", "prefork", 1)]:
        procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "_bare", "worker", "-Q", queues, "-P", pool, "-c", str(conc),
                                       "-n", f"bare-{name}@%h", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
                                      env=env, cwd=ROOT / "bench", stdout=open(work / f"bare-{name}.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        os.environ["BARE_BROKER"] = REDIS
        import _bare

        r = redis.Redis.from_url(REDIS)
        results = []
        for rounds in (2, phases):  # the first round warms the workers up
            key = f"bare-done-{rounds}-{time.time()}"
            start = time.time()
            _bare.app.send_task("bare.build", args=[0, 0, rounds, key], queue="build")
            deadline = time.monotonic() + 300
            while r.get(key) is None:
                assert time.monotonic() < deadline, "bare chain did not finish"
                time.sleep(0.005)
            results.append((float(r.get(key)) - start) / rounds)
        return results[-1]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", type=int, default=20)
    ap.add_argument("--sandbox", choices=["none", "bwrap", "both"], default="both")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        work = Path(tmp)
        bare = bare_per_phase(args.phases, work)
        out = {"phases": args.phases, "bare_chain_s_per_phase": round(bare, 4)}
        print(f"bare Celery chain (4 hops/phase, same broker and queues): {bare * 1000:.1f} ms per phase")
        for sandbox in (["none", "bwrap"] if args.sandbox == "both" else [args.sandbox]):
            per = autopack_per_phase(args.phases, sandbox, work)
            out[f"autopack_s_per_phase_sandbox_{sandbox}"] = round(per, 4)
            out[f"ratio_sandbox_{sandbox}"] = round(per / bare, 2)
            print(f"autopack per phase (sandbox={sandbox}): {per * 1000:.1f} ms  ratio {per / bare:.2f}x (goal <= 3x for orchestration, sandbox=none)")
        print(json.dumps(out))


if __name__ == "__main__":
    main()
