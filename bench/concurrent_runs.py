"""50 concurrent runs of 3 phases on 4 worker processes (prod profile): completed, lost,
duplicated, phases per second.

    .venv/bin/python bench/concurrent_runs.py [--runs 50] [--phases 3] [--sandbox none|bwrap]

Lost: a run not terminal by the deadline. Duplicated: a run whose branch holds more commits than
completed phases, a phase committed twice, or a phase with more attempts than allowed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import Cluster, make_repo, plan  # noqa: E402

QUEUES = "build,ci,audit,agents,events,maintenance"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--phases", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sandbox", choices=["none", "bwrap"], default="none")
    ap.add_argument("--deadline", type=float, default=600)
    args = ap.parse_args()
    from sqlalchemy import select

    from autopack.db.models import Phase, Run
    from autopack.db.session import session_scope
    from autopack.workspace.worktree import branch_log

    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        work = Path(tmp)
        cluster = Cluster(work, [(f"w{i}", QUEUES, "prefork", 1) for i in range(args.workers)], sandbox=args.sandbox)
        try:
            cluster.start()
            repo = make_repo(work / "repo")
            cluster.cli("project", "add", "bench", str(repo))
            start = time.monotonic()
            ids = [cluster.submit(plan(args.phases)) for _ in range(args.runs)]
            states = cluster.wait(ids, args.deadline)
            elapsed = time.monotonic() - start
            completed = sum(1 for s in states.values() if s == "DONE_SUCCESS")
            lost = sum(1 for s in states.values() if not (s.startswith("DONE_") or s == "CANCELLED"))
            duplicated = 0
            phases_done = 0
            with session_scope(cluster.db_url) as s:
                for run in s.scalars(select(Run).where(Run.id.in_(ids))):
                    done = {p.key: p.commit_sha for p in s.scalars(select(Phase).where(Phase.run_id == run.id)) if p.state == "COMPLETE"}
                    over = any(p.attempts_used > p.max_attempts for p in run.phases)
                    phases_done += len(done)
                    log = branch_log(repo, "main", run.branch)
                    keys = [e["trailers"].get("Autopack-Phase") for e in log]
                    if over or len(keys) != len(set(keys)) or sorted(keys) != sorted(done):
                        duplicated += 1
        finally:
            cluster.stop()
    out = {"runs": args.runs, "phases_per_run": args.phases, "workers": args.workers, "completed": completed, "lost": lost,
           "duplicated": duplicated, "phases": phases_done, "seconds": round(elapsed, 1), "phases_per_second": round(phases_done / elapsed, 2)}
    print(f"{args.runs} runs x {args.phases} phases on {args.workers} worker processes: completed {completed}, lost {lost}, "
          f"duplicated {duplicated}, {phases_done} phases in {elapsed:.1f}s = {phases_done / elapsed:.2f} phases/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
