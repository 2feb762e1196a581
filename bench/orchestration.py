"""Orchestration cost per phase on the prod profile (Redis broker, PostgreSQL), beside a bare Celery
choreography with the same hops on the same broker, queues, settings and worker processes, in the
same run. Goal: Autopack ≤ 3× the bare chain.

The bare chain's hops do nothing, while each Autopack phase does real work (a commit, a tree export
and a test run, a diff, a ref move), so a second comparator is printed beside it: a *work-matched*
bare chain, the same hops each doing the minimal real work of its step with its own git plumbing
(see ``_bare.py``), its test run in the same sandbox mode. Autopack / work-matched, and Autopack −
work-matched in ms, are Autopack's overhead over doing the same work in a bare chain; the headline
ratio stays Autopack / the hop-only chain.

    .venv/bin/python bench/orchestration.py [--phases 20] [--rounds 3] [--sandbox none|bwrap|both]

The model is ``bench/_model.py`` used directly through ``AUTOPACK_LLM_SCRIPT`` (in-process, zero
latency, no cassette file); the target's test command is a stub that writes a one-test JUnit report
(``sh ok_tests.sh``, shell builtins only). ``--sandbox none`` measures orchestration alone; ``bwrap`` adds the
real sandbox (two test runs per phase: none here, one probe; the baseline is outside the interval).

Per phase = (time the last phase's decide step finished − time the first one's did) / (phases − 1):
N−1 whole cycles build → probe → audit → decide → next build, without run setup and baseline.
The bare chains are timed the same way (each bare decide pushes its time). Rounds alternate the
bare chain, the work-matched chain and Autopack; the figures
are medians over rounds, and the best round of each
(the least disturbed by other load on the machine) is printed beside them. Task runtimes (worker side, from Celery task events)
split Autopack's time per phase into work inside tasks and the rest (broker, queue waits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import Cluster, TaskTap, git, loadavg, make_plan, make_target, say  # noqa: E402

from autopack.procs import WORKER_GROUPS  # noqa: E402

# The Procfile's topology (no beat: nothing here needs the reconciler).
WORKERS = list(WORKER_GROUPS)  # the Procfile's pools
STEP_TASKS = ("autopack.build_phase", "autopack.probe", "autopack.audit", "autopack.decide")
MATCHED_TASKS = ("bench.matched.build", "bench.matched.probe", "bench.matched.audit", "bench.matched.decide")


def _log_tails(cluster: Cluster, lines: int = 15) -> str:
    """The end of each process's log, for an error message (the logs go with the temp dir)."""
    out = []
    for log in sorted((cluster.workdir / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            out.append(f"\n--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "".join(out)


def _per_phase(cluster: Cluster, key: str, phases: int, timeout: float, what: str) -> float:
    """Wait for a bare chain's ``phases`` decide times on ``key``; (last − first) / (phases − 1)."""
    deadline = time.monotonic() + timeout
    while cluster.redis.llen(key) < phases:
        error = cluster.redis.get(f"{key}:error")
        if error:
            raise RuntimeError(f"the {what} failed: {error.decode()}{_log_tails(cluster)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {what} did not finish ({cluster.redis.llen(key)} of {phases} decides)"
                               f"{_log_tails(cluster)}")
        time.sleep(0.01)
    times = [float(x) for x in cluster.redis.lrange(key, 0, -1)]
    cluster.redis.delete(key)
    return (times[-1] - times[0]) / (phases - 1)


def bare_round(cluster: Cluster, phases: int, timeout: float) -> float:
    import _bare

    key = f"bench:bare:{time.time_ns()}"
    _bare.start(key, phases)
    return _per_phase(cluster, key, phases, timeout, "bare chain")


def matched_round(cluster: Cluster, repo: Path, phases: int, timeout: float) -> float:
    """The work-matched bare chain (one message per hop, like the hop-only one) on a fresh branch
    of ``repo`` from ``main``; checks afterwards that the branch got exactly one commit per phase."""
    import _bare

    key = f"bench:matched:{time.time_ns()}"
    ref = f"refs/heads/matched-{time.time_ns()}"
    head = git(repo, "rev-parse", "main").strip()
    git(repo, "update-ref", ref, head)
    _bare.start_matched(key, str(repo), ref, head, phases)
    per_phase = _per_phase(cluster, key, phases, timeout, "work-matched bare chain")
    count = int(git(repo, "rev-list", "--count", f"{head}..{ref}").strip())
    if count != phases:
        raise RuntimeError(f"the work-matched chain left {count} commits on {ref}, expected {phases}")
    return per_phase


def autopack_round(cluster: Cluster, phases: int, timeout: float) -> dict[str, float]:
    run_id = cluster.submit(make_plan(phases))
    state = cluster.wait_terminal([run_id], timeout)[run_id]
    if state != "DONE_SUCCESS":
        raise RuntimeError(f"run {run_id} ended {state}; see {cluster.workdir / 'logs'}")
    rows = cluster.sql("SELECT name, done_at FROM steps WHERE run_id = %s ORDER BY id", (run_id,))
    decides = [i for i, (name, _) in enumerate(rows) if name == "decide"]
    first, last = decides[0], decides[-1]
    per_phase = (rows[last][1] - rows[first][1]).total_seconds() / (phases - 1)
    # Time from the previous step's end to this step's end (queue wait + runtime), per step name.
    hop: dict[str, list[float]] = {}
    for i in range(first + 1, last + 1):
        hop.setdefault(rows[i][0], []).append((rows[i][1] - rows[i - 1][1]).total_seconds())
    created, finished = cluster.sql(
        "SELECT r.created_at, r.finished_at FROM runs r WHERE r.id = %s", (run_id,))[0]
    out = {"per_phase": per_phase, "end_to_end_per_phase": (finished - created).total_seconds() / phases}
    out.update({f"hop_{k}": statistics.mean(v) for k, v in hop.items()})
    return out


def measure(sandbox: str, phases: int, rounds: int, work: Path) -> dict[str, float]:
    env = {"AUTOPACK_SANDBOX": sandbox}
    with Cluster(work / f"cluster-{sandbox}", WORKERS, app="_bare", env=env) as cluster:
        # This process sends the bare chain's first message through the same app: same broker.
        os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("AUTOPACK_")})
        cluster.add_project("bench", make_target(work / f"target-{sandbox}"))
        # The work-matched chain's own target (the same make_target), so its branches and objects
        # stay out of Autopack's repository.
        matched_repo = make_target(work / f"matched-target-{sandbox}")
        # Warm-up: imports, connections, the first git and sandbox runs.
        autopack_round(cluster, 2, 120)
        bare_round(cluster, 2, 60)
        matched_round(cluster, matched_repo, 2, 60)
        bare, matched, ap = [], [], []
        runtimes: dict[str, list[float]] = {}
        with TaskTap() as tap:
            for _ in range(rounds):
                bare.append(bare_round(cluster, phases, 120))
                matched.append(matched_round(cluster, matched_repo, phases, 150))
                ap.append(autopack_round(cluster, phases, 150))
                time.sleep(0.5)  # let the last task events arrive
                for name, rts in tap.runtimes().items():
                    runtimes.setdefault(name, []).extend(rts)
    med = {k: statistics.median(r[k] for r in ap) for k in ap[0]}
    out = {
        "sandbox": sandbox,
        "bare_s_per_phase": statistics.median(bare),
        "autopack_s_per_phase": med["per_phase"],
        "autopack_end_to_end_s_per_phase": med["end_to_end_per_phase"],
        "autopack_rounds_s_per_phase": [round(r["per_phase"], 4) for r in ap],
        "bare_rounds_s_per_phase": [round(b, 4) for b in bare],
        "work_matched_s_per_phase": statistics.median(matched),
        "work_matched_rounds_s_per_phase": [round(m, 4) for m in matched],
    }
    out["ratio"] = out["autopack_s_per_phase"] / out["bare_s_per_phase"]
    # Autopack beside a bare chain doing the same work: what orchestration adds over the work.
    out["ratio_vs_work_matched"] = out["autopack_s_per_phase"] / out["work_matched_s_per_phase"]
    out["overhead_over_work_matched_s_per_phase"] = out["autopack_s_per_phase"] - out["work_matched_s_per_phase"]
    out["work_matched_best_s_per_phase"] = min(matched)
    out["ratio_vs_work_matched_best"] = min(r["per_phase"] for r in ap) / min(matched)
    # The best round of each: what is left when the machine's other load gets out of the way.
    out["bare_best_s_per_phase"] = min(bare)
    out["autopack_best_s_per_phase"] = min(r["per_phase"] for r in ap)
    out["ratio_best"] = out["autopack_best_s_per_phase"] / out["bare_best_s_per_phase"]
    out["hops"] = {k[4:]: round(v, 4) for k, v in med.items() if k.startswith("hop_")}
    out["task_runtime_mean_s"] = {k: round(statistics.mean(v), 4) for k, v in sorted(runtimes.items())}
    out["task_count_per_phase"] = {k: round(len(v) / (rounds * phases), 2) for k, v in sorted(runtimes.items())}
    # Work inside the four step tasks per phase, from the workers' own runtimes.
    out["autopack_task_runtime_s_per_phase"] = sum(statistics.mean(runtimes[t]) for t in STEP_TASKS if t in runtimes)
    out["work_matched_task_runtime_s_per_phase"] = sum(statistics.mean(runtimes[t]) for t in MATCHED_TASKS if t in runtimes)
    return out


def report(r: dict) -> None:
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    sb = r["sandbox"]
    say(f"[sandbox={sb}] bare Celery chain, 4 hops/phase (build→probe→audit→decide→next): {ms(r['bare_s_per_phase'])} per phase "
        f"(rounds: {', '.join(ms(x) for x in r['bare_rounds_s_per_phase'])})")
    say(f"[sandbox={sb}] Autopack, decide to decide: {ms(r['autopack_s_per_phase'])} per phase "
        f"(rounds: {', '.join(ms(x) for x in r['autopack_rounds_s_per_phase'])}); "
        f"end to end incl. setup and baseline: {ms(r['autopack_end_to_end_s_per_phase'])} per phase")
    say(f"[sandbox={sb}] ratio Autopack / bare chain: {r['ratio']:.1f}x (medians; goal <= 3x); best rounds: "
        f"{ms(r['autopack_best_s_per_phase'])} / {ms(r['bare_best_s_per_phase'])} = {r['ratio_best']:.1f}x")
    say(f"[sandbox={sb}] work-matched bare chain, same 4 hops, each doing its step's minimal work (blob + commit-tree; "
        f"tree export + the test run; git diff; update-ref CAS): {ms(r['work_matched_s_per_phase'])} per phase "
        f"(rounds: {', '.join(ms(x) for x in r['work_matched_rounds_s_per_phase'])}); "
        f"inside its 4 tasks: {ms(r['work_matched_task_runtime_s_per_phase'])}")
    say(f"[sandbox={sb}] ratio Autopack / work-matched bare chain: {r['ratio_vs_work_matched']:.1f}x (medians; best rounds "
        f"{r['ratio_vs_work_matched_best']:.1f}x): Autopack's overhead over doing the same work in a bare chain is "
        f"{ms(r['overhead_over_work_matched_s_per_phase'])} per phase")
    say(f"[sandbox={sb}] Autopack hop times (previous step done -> this step done): "
        + ", ".join(f"{k} {ms(v)}" for k, v in r["hops"].items()))
    say(f"[sandbox={sb}] worker-side task runtimes (mean, tasks per phase): "
        + ", ".join(f"{k} {ms(v)} x{r['task_count_per_phase'][k]}" for k, v in r["task_runtime_mean_s"].items()))
    say(f"[sandbox={sb}] inside the 4 step tasks: {ms(r['autopack_task_runtime_s_per_phase'])} of {ms(r['autopack_s_per_phase'])} per phase")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sandbox", choices=["none", "bwrap", "both"], default="both")
    args = ap.parse_args()
    if args.phases < 2:
        ap.error("--phases must be at least 2")
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        for sandbox in (["none", "bwrap"] if args.sandbox == "both" else [args.sandbox]):
            r = measure(sandbox, args.phases, args.rounds, Path(tmp))
            report(r)
            results.append(r)
    say(f"took {time.monotonic() - started:.0f}s")
    say(f"load average (1 min) at the end: {loadavg():.2f} on {os.cpu_count()} cores")
    print(json.dumps({"benchmark": "orchestration", "loadavg_end": loadavg(), "phases": args.phases, "rounds": args.rounds,
                      "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results]}))


if __name__ == "__main__":
    main()
