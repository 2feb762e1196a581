"""Worker resident memory (RSS of the worker processes and their pool children, from /proc)
across 200 phases on the prod profile; flat within 10% is the goal.

    .venv/bin/python bench/memory.py [--runs 40] [--phases 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import Cluster, make_repo, plan, rss_kib  # noqa: E402

WORKERS = [("build", "build,audit", "threads", 2), ("ci", "ci", "prefork", 1), ("events", "events,agents,maintenance", "prefork", 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--phases", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    samples: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        work = Path(tmp)
        cluster = Cluster(work, WORKERS)
        try:
            cluster.start()
            repo = make_repo(work / "repo")
            cluster.cli("project", "add", "bench", str(repo))
            warm = cluster.submit(plan(args.phases))
            cluster.wait([warm], 120)
            done = 0
            samples.append((done, rss_kib(cluster.worker_pids())))
            for _ in range(0, args.runs, args.batch):
                ids = [cluster.submit(plan(args.phases)) for _ in range(args.batch)]
                states = cluster.wait(ids, 300)
                done += sum(args.phases for s in states.values() if s == "DONE_SUCCESS")
                samples.append((done, rss_kib(cluster.worker_pids())))
        finally:
            cluster.stop()
    start, end = samples[0][1], samples[-1][1]
    peak = max(s[1] for s in samples)
    growth = (end - start) / start
    for phases, kib in samples:
        print(f"after {phases:>4} phases: workers' RSS {kib / 1024:.1f} MiB")
    print(f"start {start / 1024:.1f} MiB, end {end / 1024:.1f} MiB, max {peak / 1024:.1f} MiB, growth {growth * 100:+.1f}% "
          f"({'flat within 10%' if abs(growth) <= 0.10 else 'NOT flat within 10%'})")
    print(json.dumps({"phases": samples[-1][0], "rss_start_kib": start, "rss_end_kib": end, "rss_max_kib": peak, "growth": round(growth, 4)}))


if __name__ == "__main__":
    main()
