"""Autopack's Celery app plus a bare choreography of no-op tasks, for ``orchestration.py``.

Workers started with ``celery -A _bare`` run Autopack's tasks and these on the same broker, the same
queues, the same Celery settings (acks late, prefetch 1, results and task events on) and in the same
processes, so the only difference left is what Autopack's steps do.

A bare phase is the pipeline's hops with nothing in them: build (queue build) → probe (ci) → audit
(audit) → decide (events) → the next phase's build, each hop a task that sends the next one by
name: one message per hop, as Autopack's pipeline sends (a step's worker sends its events out
itself, with no message of its own). ``decide`` pushes its time on a Redis list, so the driver
measures the same interval as for Autopack (one decide to the next).

The *work-matched* chain (``start_matched``) has the same four hops on the same queues, but each
does the minimal real work of the corresponding Autopack step, with its own ``git`` plumbing (not
Autopack's workspace layer, so what that layer costs beyond this counts as Autopack's overhead):

* build: the phase's one file (``out/p<N>.txt``) written as a blob, a temporary index read from the
  parent's tree with that blob added, ``write-tree``, ``commit-tree -p parent`` with fixed author
  and committer dates;
* probe: the commit's tree exported into a fresh temp dir (temporary index, ``read-tree``,
  ``checkout-index --prefix``), then the plan's test command run there through Autopack's sandbox
  runner in the cluster's ``AUTOPACK_SANDBOX`` mode and handed over to it (moved, not copied), as
  Autopack's probe runs it (the sandboxed test
  process is the work itself); it must write a passing JUnit report;
* audit: ``git diff parent commit``;
* decide: the chain's branch moved with ``git update-ref ref commit parent`` (compare-and-set).

Each hop passes the repository, the ref, the parent and the commit to the next in its arguments.
A failing hop sets ``<key>:error`` so the driver stops waiting.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tasks.app import app

HOPS = (("bench.bare.build", "build"), ("bench.bare.probe", "ci"), ("bench.bare.audit", "audit"), ("bench.bare.decide", "events"))
_redis: redis.Redis | None = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(app.conf.broker_url)
    return _redis


def start(key: str, phases: int) -> None:
    """Send the first hop of a chain of ``phases`` bare phases; its decides are pushed on ``key``."""
    app.send_task(HOPS[0][0], args=[key, 0, 0, phases], queue=HOPS[0][1])


def _hop(key: str, phase: int, index: int, phases: int) -> None:
    if index == len(HOPS) - 1:
        _r().rpush(key, repr(time.time()))
        phase, index = phase + 1, 0
        if phase == phases:
            return
    else:
        index += 1
    name, queue = HOPS[index]
    app.send_task(name, args=[key, phase, index, phases], queue=queue)


for _name, _queue in HOPS:
    app.task(name=_name)(_hop)


# ------------------------------------------------------------------------------ work-matched chain

MATCHED = (("bench.matched.build", "build"), ("bench.matched.probe", "ci"), ("bench.matched.audit", "audit"),
           ("bench.matched.decide", "events"))
JUNIT = "autopack-junit.xml"  # the report path Autopack appends to the test command (--junitxml)
TEST_TIMEOUT_S = 300  # config/strategy.yaml's run.test_timeout_s, which Autopack's probe uses as its limits
_DATE = "@1700000000 +0000"
_GIT_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
_GIT_ENV.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C",
                GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@example.invalid", GIT_AUTHOR_DATE=_DATE,
                GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@example.invalid", GIT_COMMITTER_DATE=_DATE)
_sandbox: Any = None


def _git(repo: str, *args: str, index: str | None = None, input: str | None = None) -> str:
    env = _GIT_ENV if index is None else {**_GIT_ENV, "GIT_INDEX_FILE": index}
    return subprocess.run(["git", *args], cwd=repo, env=env, input=input, capture_output=True, text=True,
                          check=True).stdout.strip()


def _test_argv() -> list[str]:
    from _cluster import make_plan  # the same test command as the plan Autopack runs

    return [a.replace("{python}", sys.executable) for a in make_plan(1)["test_command"]] + ["--junitxml", JUNIT]


def _get_sandbox() -> Any:
    """The runner Autopack's services build for the cluster's AUTOPACK_SANDBOX, once per process."""
    global _sandbox
    if _sandbox is None:
        from autopack.sandbox import BwrapSandbox, UnsandboxedRunner, check_bwrap

        if os.environ.get("AUTOPACK_SANDBOX", "bwrap") == "none":
            _sandbox = UnsandboxedRunner()
        else:
            check_bwrap()
            _sandbox = BwrapSandbox()
    return _sandbox


def start_matched(key: str, repo: str, ref: str, head: str, phases: int) -> None:
    """Send the first build of ``phases`` work-matched phases on ``ref`` (which is at ``head``)."""
    app.send_task(MATCHED[0][0], args=[key, repo, ref, 0, phases, head, None], queue=MATCHED[0][1])


def _send(index: int, key: str, repo: str, ref: str, phase: int, phases: int, parent: str, commit: str | None) -> None:
    name, queue = MATCHED[index]
    app.send_task(name, args=[key, repo, ref, phase, phases, parent, commit], queue=queue)


def _failing(fn: Any) -> Any:
    """Record a hop's failure where the driver looks, then let Celery log it."""
    @functools.wraps(fn)
    def wrapper(key: str, *args: Any) -> None:
        try:
            fn(key, *args)
        except Exception as exc:
            _r().set(f"{key}:error", f"{fn.__name__}: {exc!r}"[:2000])
            raise
    return wrapper


@app.task(name=MATCHED[0][0])
@_failing
def _matched_build(key: str, repo: str, ref: str, phase: int, phases: int, parent: str, _c: None) -> None:
    path = f"out/p{phase}.txt"
    blob = _git(repo, "hash-object", "-w", "--stdin", input=f"p{phase}\n")
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        index = str(Path(tmp) / "index")
        _git(repo, "read-tree", parent, index=index)
        _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", index=index)
        tree = _git(repo, "write-tree", index=index)
    commit = _git(repo, "commit-tree", tree, "-p", parent, "-m", f"bench p{phase}\n\nBench-Chain: {key}")
    _send(1, key, repo, ref, phase, phases, parent, commit)


@app.task(name=MATCHED[1][0])
@_failing
def _matched_probe(key: str, repo: str, ref: str, phase: int, phases: int, parent: str, commit: str) -> None:
    from autopack.sandbox import SandboxLimits

    with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
        index, tree = str(Path(tmp) / "index"), Path(tmp) / "tree"
        tree.mkdir()
        _git(repo, "read-tree", commit, index=index)
        _git(repo, "checkout-index", "--all", "--force", f"--prefix={tree}/", index=index)
        res = _get_sandbox().run(tree, _test_argv(), SandboxLimits(timeout_s=TEST_TIMEOUT_S, cpu_s=TEST_TIMEOUT_S),
                                 collect=[JUNIT], consume=True)  # moved in, as Autopack's probe does
    report = res.files.get(JUNIT) or ""
    if res.exit_code != 0 or 'failures="0"' not in report:
        raise RuntimeError(f"the test run failed: exit {res.exit_code}, killed {res.killed}, report {report[:200]!r}, "
                           f"stderr {res.stderr[-500:]!r}")
    _send(2, key, repo, ref, phase, phases, parent, commit)


@app.task(name=MATCHED[2][0])
@_failing
def _matched_audit(key: str, repo: str, ref: str, phase: int, phases: int, parent: str, commit: str) -> None:
    if f"out/p{phase}.txt" not in _git(repo, "diff", parent, commit):
        raise RuntimeError(f"the diff {parent}..{commit} lacks out/p{phase}.txt")
    _send(3, key, repo, ref, phase, phases, parent, commit)


@app.task(name=MATCHED[3][0])
@_failing
def _matched_decide(key: str, repo: str, ref: str, phase: int, phases: int, parent: str, commit: str) -> None:
    _git(repo, "update-ref", "-m", "bench", ref, commit, parent)
    _r().rpush(key, repr(time.time()))
    if phase + 1 == phases:
        return
    _send(0, key, repo, ref, phase + 1, phases, commit, None)
