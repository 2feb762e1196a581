"""Concurrent runs on the prod profile: 50 runs of 3 phases on 4 worker processes (each consuming
every queue, one pool process each), submitted at once through the HTTP API.

    .venv/bin/python bench/concurrent_runs.py [--runs 50] [--phases 3] [--workers 4] [--deadline 150]
        [--sandbox none|bwrap] [--fail-first p1]

Figures: completed (DONE_SUCCESS), failed (another terminal state), lost (not terminal by the
deadline), duplicated, phases per second (completed phases / time from the first submission to
the last run's end).

Duplicated: a run whose integration branch does not hold exactly one commit per completed phase —
more commits than completed phases, a phase or an attempt committed twice, a commit whose trailers
(Autopack-Run, -Phase, -Attempt) do not name the phase's accepted attempt in the database, a phase
commit that is not the SHA the database recorded — or a phase with more than one accepted attempt
or more attempts than it is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import Cluster, branch_commits, is_terminal, loadavg, make_plan, make_target, say  # noqa: E402

ALL_QUEUES = "build,ci,audit,agents,events,maintenance"


def check_run(cluster: Cluster, repo: Path, run_id: str) -> list[str]:
    """What is wrong with the run's branch against the database (empty: nothing)."""
    problems: list[str] = []
    branch = cluster.sql("SELECT branch FROM runs WHERE id = %s", (run_id,))[0][0]
    phases = {key: (state, sha, used, cap) for key, state, sha, used, cap in cluster.sql(
        "SELECT key, state, commit_sha, attempts_used, max_attempts FROM phases WHERE run_id = %s", (run_id,))}
    accepted: dict[str, list[int]] = {}
    for key, number in cluster.sql(
            "SELECT p.key, a.number FROM attempts a JOIN phases p ON p.id = a.phase_id "
            "WHERE a.run_id = %s AND a.decision = 'complete'", (run_id,)):
        accepted.setdefault(key, []).append(number)
    completed = {k for k, (state, *_) in phases.items() if state == "COMPLETE"}
    commits = branch_commits(repo, branch)
    if len(commits) != len(completed):
        problems.append(f"{len(commits)} commits for {len(completed)} completed phases")
    seen_phase: set[str] = set()
    seen_attempt: set[tuple[str, str]] = set()
    for c in commits:
        t = c["trailers"]
        run, phase, attempt = (t.get(k, [None])[-1] for k in ("Autopack-Run", "Autopack-Phase", "Autopack-Attempt"))
        if run != run_id:
            problems.append(f"commit {c['sha'][:10]} names run {run}")
        if phase in seen_phase:
            problems.append(f"phase {phase} committed twice")
        if (phase, attempt) in seen_attempt:
            problems.append(f"attempt {phase}/{attempt} applied twice")
        seen_phase.add(phase)
        seen_attempt.add((phase, attempt))
        if phase not in completed:
            problems.append(f"commit for phase {phase}, which is not COMPLETE in the database")
        elif phases[phase][1] != c["sha"]:
            problems.append(f"phase {phase}: branch commit {c['sha'][:10]} is not the recorded {str(phases[phase][1])[:10]}")
        if attempt is None or [int(attempt)] != accepted.get(phase):
            problems.append(f"phase {phase}: commit of attempt {attempt}, accepted attempts {accepted.get(phase)}")
    for key, (_state, _sha, used, cap) in phases.items():
        if used > cap:
            problems.append(f"phase {key}: {used} attempts of {cap} allowed")
        if len(accepted.get(key, [])) > 1:
            problems.append(f"phase {key}: {len(accepted[key])} accepted attempts")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--phases", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=150.0, help="seconds from the first submission")
    ap.add_argument("--sandbox", choices=["none", "bwrap"], default="none")
    ap.add_argument("--fail-first", default="", metavar="PHASES",
                    help="comma-separated phase ids (p0, p1, …) whose first attempt fails the tests and is retried")
    args = ap.parse_args()
    workers = [(f"w{i}", ALL_QUEUES, "prefork", 1) for i in range(args.workers)]
    env = {"AUTOPACK_SANDBOX": args.sandbox, "BENCH_FAIL_FIRST": args.fail_first}
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        work = Path(tmp)
        with Cluster(work / "cluster", workers, env=env) as cluster:
            repo = make_target(work / "target")
            cluster.add_project("bench", repo)
            plan = make_plan(args.phases, tiers=2 if args.phases > 1 else 1)
            start = time.monotonic()
            ids = [cluster.submit(plan) for _ in range(args.runs)]
            submitted = time.monotonic() - start
            states = cluster.wait_terminal(ids, max(1.0, args.deadline - submitted), poll=0.25)
            elapsed = time.monotonic() - start
            lost = [r for r, s in states.items() if not is_terminal(s)]
            completed = [r for r, s in states.items() if s == "DONE_SUCCESS"]
            failed = {r: s for r, s in states.items() if is_terminal(s) and s != "DONE_SUCCESS"}
            # The wall clock of the work itself: first submission to the last run's end.
            span = cluster.sql("SELECT EXTRACT(EPOCH FROM MAX(finished_at) - MIN(created_at)) FROM runs WHERE id = ANY(%s)", (ids,))[0][0]
            phases_done = cluster.sql("SELECT COUNT(*) FROM phases WHERE run_id = ANY(%s) AND state = 'COMPLETE'", (ids,))[0][0]
            attempts = cluster.sql("SELECT COUNT(*) FROM attempts WHERE run_id = ANY(%s)", (ids,))[0][0]
            duplicated = {}
            for run_id in ids:
                problems = check_run(cluster, repo, run_id)
                if problems:
                    duplicated[run_id] = problems
            for run_id, state in list(failed.items())[:5]:
                reason = cluster.sql("SELECT failure_reason FROM runs WHERE id = %s", (run_id,))[0][0]
                say(f"failed run {run_id}: {state}: {str(reason)[:300]}")
            for run_id, problems in list(duplicated.items())[:5]:
                say(f"duplicated run {run_id}: {'; '.join(problems)}")
    span = float(span) if span is not None else elapsed
    pps = phases_done / span if span else 0.0
    say(f"{args.runs} runs x {args.phases} phases on {args.workers} worker processes (sandbox={args.sandbox}"
        f"{', first attempt fails in ' + args.fail_first if args.fail_first else ''}), submitted in {submitted:.1f}s")
    say(f"completed {len(completed)}, failed {len(failed)}, lost {len(lost)}, duplicated {len(duplicated)}")
    say(f"{phases_done} phases completed ({attempts} attempts) in {span:.1f}s: {pps:.2f} phases/s")
    say(f"load average (1 min) at the end: {loadavg():.2f} on {os.cpu_count()} cores")
    print(json.dumps({"benchmark": "concurrent_runs", "loadavg_end": loadavg(), "runs": args.runs, "phases_per_run": args.phases, "workers": args.workers,
                      "sandbox": args.sandbox, "fail_first": args.fail_first, "completed": len(completed), "failed": len(failed), "lost": len(lost),
                      "duplicated": len(duplicated), "phases_completed": phases_done, "attempts": attempts,
                      "seconds": round(span, 2), "phases_per_second": round(pps, 3)}))


if __name__ == "__main__":
    main()
