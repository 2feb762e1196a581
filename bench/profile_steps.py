"""Where a step's time goes: the pipeline of one run executed in this process, step by step, under
cProfile, on the prod profile (PostgreSQL, Redis) with the zero-latency model and the stub tests.

    .venv/bin/python bench/profile_steps.py [--phases 10] [--sandbox none|bwrap] [--top 12] [--files N] [--wall] [--sql]

Only the web process is started (no workers): this process claims and executes each open step
with the engine's own ``execute`` (the messages the API and the steps send stay in Redis, which is
flushed after). Per step name it prints the mean wall time; git calls, test runs and SQL statements
per step with the time in them; database commits per step; and the engine functions with the most
cumulative time. ``--wall`` runs without the profiler and prints only each step's wall time;
``--files N`` adds N source files to the target, to see how the steps scale with its size;
``--wall`` also splits each step's time into git, SQL, commits, test runs and the rest (Python);
``--sql`` prints the statements of each step's last execution.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import Cluster, loadavg, make_plan, make_target, say  # noqa: E402

COUNTED = {
    "git_calls": ("autopack/workspace/git.py", "run_bytes", "Git"),
    "test_runs": ("autopack/sandbox/runner.py", "run", "Sandbox"),
    "sql_statements": ("base.py", "_execute_context", "Connection"),
    "db_commits": ("engine/base.py", "_commit_impl", "Connection"),
}


def calls_of(stats: pstats.Stats, file_end: str, func: str) -> tuple[int, float]:
    n, cum = 0, 0.0
    for (file, _line, name), (cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if file.endswith(file_end) and name == func:
            n += cc
            cum += ct
    return n, cum


def _time_parts(spent: dict[str, float], db_url: str) -> None:
    """Add each git call's, SQL statement's, commit's and test run's wall time to ``spent`` (by
    wrapping them in this process), so ``--wall`` splits a step's time without a profiler."""
    from sqlalchemy import event

    from autopack.db.session import get_engine
    from autopack.sandbox import runner
    from autopack.workspace.git import Git

    def timed(cls: type, method: str, part: str) -> None:
        inner = getattr(cls, method)

        def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - t

        setattr(cls, method, wrapper)

    timed(Git, "run_bytes", "git")
    for name in ("UnsandboxedRunner", "BwrapSandbox"):
        if hasattr(runner, name):
            timed(getattr(runner, name), "run", "tests")
    engine = get_engine(db_url)
    started: list[float] = []
    event.listen(engine, "before_cursor_execute", lambda *_a: started.append(time.perf_counter()))
    event.listen(engine, "after_cursor_execute",
                 lambda *_a: spent.__setitem__("sql", spent.get("sql", 0.0) + time.perf_counter() - started.pop()))
    timed(type(engine.dialect), "do_commit", "commit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", type=int, default=10)
    ap.add_argument("--sandbox", choices=["none", "bwrap"], default="none")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--sort", choices=["cumulative", "tottime"], default="cumulative",
                    help="order of the function table (tottime: where the time is spent, in any module)")
    ap.add_argument("--only", help="print the table of these steps only (comma-separated names)")
    ap.add_argument("--files", type=int, default=0,
                    help="source files added to the target repository (how the steps scale with its size)")
    ap.add_argument("--sql", action="store_true",
                    help="print the SQL statements and commits of each step's last execution, in order")
    ap.add_argument("--wall", action="store_true",
                    help="no profiler: only the mean wall time per step (cProfile slows Python code about twofold)")
    args = ap.parse_args()
    profiles: dict[str, cProfile.Profile] = {}
    walls: dict[str, list[float]] = {}
    statements: dict[str, list[str]] = {}
    current: list[str] = []
    spent: dict[str, float] = {}  # --wall: seconds of the current step in git, SQL, commits and test runs
    parts: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        work = Path(tmp)
        with Cluster(work / "cluster", [], env={"AUTOPACK_SANDBOX": args.sandbox}) as cluster:
            os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("AUTOPACK_")})
            from autopack.engine.runner import execute
            from autopack.engine.services import build_services
            from autopack.settings import get_settings

            services = build_services(get_settings())
            if args.wall:
                _time_parts(spent, get_settings().db_url)
            if args.sql:
                from sqlalchemy import event

                from autopack.db.session import get_engine

                engine = get_engine(get_settings().db_url)
                event.listen(engine, "before_cursor_execute",
                             lambda _c, _cur, sql, *_a: current.append(" ".join(sql.split())))
                event.listen(engine, "commit", lambda _c: current.append("COMMIT"))
            cluster.add_project("bench", make_target(work / "target", args.files))
            warm = cluster.submit(make_plan(2))
            run_id = cluster.submit(make_plan(args.phases))
            deadline = time.monotonic() + 150
            for rid, profile in ((warm, False), (run_id, True)):
                while time.monotonic() < deadline:
                    rows = cluster.sql("SELECT id, name FROM steps WHERE run_id = %s AND done_at IS NULL ORDER BY id LIMIT 1", (rid,))
                    if not rows:
                        break
                    step_id, name = rows[0]
                    prof = profiles.setdefault(name, cProfile.Profile()) if profile and not args.wall else None
                    current.clear()
                    spent.clear()
                    t = time.perf_counter()
                    if prof is not None:
                        prof.enable()
                    execute(services, step_id)
                    if prof is not None:
                        prof.disable()
                    if profile:
                        walls.setdefault(name, []).append(time.perf_counter() - t)
                        statements[name] = list(current)
                        for part, seconds in spent.items():
                            parts.setdefault(name, {}).setdefault(part, []).append(seconds)
            state = cluster.states([run_id])[run_id]
    say(f"run of {args.phases} phases executed in-process (sandbox={args.sandbox}, target of {args.files + 2} files): {state}")
    out: dict[str, dict[str, float]] = {}
    if args.wall:
        for name, w in walls.items():
            out[name] = {"mean_ms": round(statistics.mean(w) * 1000, 2), "median_ms": round(statistics.median(w) * 1000, 2), "count": len(w)}
            split = {part: round(statistics.mean(v + [0.0] * (len(w) - len(v))) * 1000, 2) for part, v in parts.get(name, {}).items()}
            split["rest"] = round(out[name]["mean_ms"] - sum(split.values()), 2)
            out[name]["split_ms"] = split  # type: ignore[assignment]
            say(f"== {name}: {out[name]['mean_ms']:.1f} ms mean, {out[name]['median_ms']:.1f} ms median per step over {len(w)} (no profiler): "
                + ", ".join(f"{part} {ms:.1f}" for part, ms in split.items()))
    for name in ("build", "probe", "audit", "decide", "start_run", "baseline"):
        if name not in profiles:
            continue
        n = len(walls[name])
        stats = pstats.Stats(profiles[name], stream=sys.stdout)
        fig = {"mean_ms": statistics.mean(walls[name]) * 1000, "count": n}
        for label, (file_end, func, _cls) in COUNTED.items():
            calls, cum = calls_of(stats, file_end, func)
            fig[f"{label}_per_step"] = calls / n
            fig[f"{label}_ms_per_step"] = cum / n * 1000
        out[name] = {k: round(v, 2) for k, v in fig.items()}
        say(f"\n== {name}: {fig['mean_ms']:.1f} ms per step over {n}; "
            f"{fig['git_calls_per_step']:.1f} git calls ({fig['git_calls_ms_per_step']:.0f} ms), "
            f"{fig['test_runs_per_step']:.0f} test runs ({fig['test_runs_ms_per_step']:.0f} ms), {fig['sql_statements_per_step']:.1f} SQL statements ({fig['sql_statements_ms_per_step']:.0f} ms), "
            f"{fig['db_commits_per_step']:.1f} database commits per step")
        if args.only is None or name in args.only.split(","):
            if args.sort == "cumulative":
                stats.sort_stats("cumulative").print_stats(r"autopack/", args.top)
            else:
                stats.sort_stats("tottime").print_stats(args.top)
    if args.sql:
        for name, sqls in statements.items():
            say(f"\n== {name}: {len(sqls)} statements and commits in its last execution")
            for i, sql in enumerate(sqls, 1):
                say(f"{i:3d} {sql[:160]}")
    say(f"load average (1 min) at the end: {loadavg():.2f} on {os.cpu_count()} cores")
    print(json.dumps({"benchmark": "profile_steps", "loadavg_end": loadavg(), "phases": args.phases, "sandbox": args.sandbox,
                      "target_files": args.files + 2, "state": state, "steps": out}))


if __name__ == "__main__":
    main()
