"""Worker resident memory across 200 phases on the prod profile: the RSS (VmRSS from /proc) of the
worker processes and their pool children, summed, on the Procfile's topology (build+audit prefork
×4, ci prefork ×2, events+agents+maintenance prefork ×2).

    .venv/bin/python bench/memory.py [--runs 40] [--phases 5] [--wave 4] [--recycle] [--sandbox none|bwrap]

Runs are submitted through the HTTP API in waves of ``--wave`` concurrent runs; RSS is sampled
every 0.25 s in between and after each wave. "start" is after a warm-up wave (imports, connections,
first git and sandbox runs in every pool process), "end" after the last wave. By default pool processes are not recycled
(``AUTOPACK_MAX_TASKS_PER_CHILD`` set out of reach) so growth is not hidden; ``--recycle`` keeps the
configured recycling (200 tasks per child by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import Cluster, loadavg, make_plan, make_target, say  # noqa: E402

from autopack.procs import WORKER_GROUPS  # noqa: E402

WORKERS = list(WORKER_GROUPS)  # the Procfile's pools


def totals(cluster: Cluster) -> tuple[int, int]:
    """(RSS, PSS) in KiB of all worker processes (leaders and pool children)."""
    mem = cluster.worker_memory_kib().values()
    return sum(r for r, _ in mem), sum(p for _, p in mem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--phases", type=int, default=5)
    ap.add_argument("--wave", type=int, default=4)
    ap.add_argument("--recycle", action="store_true", help="keep the configured pool recycling")
    ap.add_argument("--sandbox", choices=["none", "bwrap"], default="none")
    ap.add_argument("--deadline", type=float, default=170.0, help="seconds for all waves")
    args = ap.parse_args()
    env = {"AUTOPACK_SANDBOX": args.sandbox}
    if not args.recycle:
        env["AUTOPACK_MAX_TASKS_PER_CHILD"] = "1000000"
    samples: list[tuple[float, int, int, int]] = []  # (seconds, phases completed so far, RSS KiB, PSS KiB)
    waves: list[tuple[int, int, int]] = []  # (phases completed, RSS KiB, PSS KiB) after each wave
    wave_split: list[dict[str, int]] = []  # RSS KiB per worker after each wave
    done = 0
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        work = Path(tmp)
        with Cluster(work / "cluster", WORKERS, env=env) as cluster:
            cluster.add_project("bench", make_target(work / "target"))
            plan = make_plan(args.phases)
            # Warm-up: one wave, so every pool process has run steps of each kind at least once.
            warm = [cluster.submit(plan) for _ in range(args.wave)]
            if set(cluster.wait_terminal(warm, 120).values()) != {"DONE_SUCCESS"}:
                raise RuntimeError("the warm-up wave failed")
            time.sleep(1.0)
            start_kib, start_pss = totals(cluster)
            start_split = cluster.worker_memory_kib()
            start_pids = cluster.worker_pids()
            t0 = time.monotonic()
            stop = threading.Event()

            def sampler() -> None:
                while not stop.wait(0.25):
                    samples.append((time.monotonic() - t0, done, *totals(cluster)))

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            failed = lost = 0
            try:
                for first in range(0, args.runs, args.wave):
                    left = args.deadline - (time.monotonic() - t0)
                    if left <= 0:
                        lost += args.runs - first
                        break
                    ids = [cluster.submit(plan) for _ in range(min(args.wave, args.runs - first))]
                    states = cluster.wait_terminal(ids, left, poll=0.1)
                    ok = [r for r, s in states.items() if s == "DONE_SUCCESS"]
                    failed += sum(1 for s in states.values() if s.startswith(("DONE_FAILED", "CANCELLED")))
                    lost += len(ids) - len(ok) - sum(1 for s in states.values() if s.startswith(("DONE_FAILED", "CANCELLED")))
                    done += len(ok) * args.phases
                    waves.append((done, *totals(cluster)))
                    wave_split.append({n: r for n, (r, _) in cluster.worker_memory_kib().items()})
            finally:
                stop.set()
                thread.join(2)
            time.sleep(1.0)
            end_kib, end_pss = totals(cluster)
            end_split = cluster.worker_memory_kib()
            replaced = sum(len(set(start_pids[n]) - set(pids)) for n, pids in cluster.worker_pids().items())
            elapsed = time.monotonic() - t0
    peak = max([start_kib, end_kib, *(s[2] for s in samples)])
    peak_pss = max([start_pss, end_pss, *(s[3] for s in samples)])
    low = min([start_kib, end_kib, *(s[2] for s in samples)])
    growth = (end_kib - start_kib) / start_kib
    flat = abs(growth) <= 0.10 and (peak - start_kib) / start_kib <= 0.10
    pss_growth = (end_pss - start_pss) / start_pss
    mib = lambda k: f"{k / 1024:.1f} MiB"  # noqa: E731
    for (phases, kib, pss), split in zip(waves, wave_split):
        say(f"after {phases:>4} phases: worker RSS {mib(kib)} (PSS {mib(pss)}; " + ", ".join(f"{n} {mib(v)}" for n, v in split.items()) + ")")
    say("per worker (leader + pool processes) RSS start -> end: "
        + ", ".join(f"{n} {mib(start_split[n][0])} -> {mib(end_split.get(n, (0, 0))[0])}" for n in start_split))
    say(f"{done} phases in {elapsed:.0f}s (failed runs {failed}, lost {lost}); recycling {'on' if args.recycle else 'off'}, "
        f"worker processes replaced: {replaced}")
    say(f"worker PSS start {mib(start_pss)}, end {mib(end_pss)}, end vs start {pss_growth * 100:+.1f}%")
    say(f"worker RSS start {mib(start_kib)}, end {mib(end_kib)}, max {mib(peak)}, min {mib(low)}, end vs start {growth * 100:+.1f}%, "
        f"max vs start {(peak - start_kib) / start_kib * 100:+.1f}%: {'flat within 10%' if flat else 'NOT flat within 10%'}")
    say(f"load average (1 min) at the end: {loadavg():.2f} on {os.cpu_count()} cores")
    print(json.dumps({"benchmark": "memory", "loadavg_end": loadavg(), "phases": done, "runs": args.runs, "phases_per_run": args.phases, "recycle": args.recycle,
                      "sandbox": args.sandbox, "rss_start_kib": start_kib, "rss_end_kib": end_kib, "rss_max_kib": peak,
                      "rss_min_kib": low, "growth": round(growth, 4), "flat_within_10pct": flat,
                      "pss_start_kib": start_pss, "pss_end_kib": end_pss, "pss_max_kib": peak_pss, "pss_growth": round(pss_growth, 4),
                      "processes_replaced": replaced,
                      "per_worker_start_kib": start_split, "per_worker_end_kib": end_split,
                      "after_waves": waves, "failed_runs": failed, "lost_runs": lost}))


if __name__ == "__main__":
    main()
