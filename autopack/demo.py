"""``autopack demo``: the example plan on a fresh repository, through the API and the queues."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from autopack.settings import ROOT, Settings

EXAMPLE = ROOT / "examples" / "demo"
DEMO_PROJECT = "demo"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Demo Author",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "Demo Author",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _say(msg: str) -> None:
    print(msg, flush=True)


def create_target_repo(dest: Path) -> Path:
    """A fresh git repository holding the example project on branch ``main``."""
    shutil.copytree(EXAMPLE / "target", dest)
    env = {**os.environ, **GIT_ENV}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "calc: initial import"]):
        subprocess.run(argv, cwd=dest, env=env, check=True, capture_output=True)
    return dest


def demo_settings(settings: Settings) -> Settings:
    """The demo keeps its own state folder (database, broker, worktrees) beside the user's."""
    return settings.model_copy(update={"state_dir": settings.state_path / "demo"})


def summary(run: dict[str, Any], repo: Path) -> dict[str, Any]:
    return {
        "run_id": run["id"],
        "state": run["state"],
        "repo": str(repo),
        "branch": run["branch"],
        "base_branch": run["base_branch"],
        "phases": [{"id": ph["id"], "state": ph["state"], "attempts": ph["attempts"]} for t in run["tiers"] for ph in t["phases"]],
        "tokens": run["tokens"],
        "cost_usd": run["cost_usd"],
    }


def wait_postmortem(client: Any, run_id: str, timeout: float = 20.0) -> str | None:
    """The run's postmortem once the event dispatcher has written it (Markdown), or None."""
    from autopack.client import ApiError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return str(client.request("GET", f"/runs/{run_id}/postmortem?format=json")[1]["markdown"])
        except ApiError as exc:
            if exc.status != 404:
                raise
        time.sleep(0.2)
    return None


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from autopack.cli import _check_sandbox, _print_run, _start_cluster, follow
    from autopack.client import ApiClient
    from autopack.db.migrate import upgrade
    from autopack.db.models import Project
    from autopack.db.session import session_scope
    from autopack.plan import load_plan_text
    from autopack.procs import free_port

    started = time.monotonic()
    ds = demo_settings(settings)
    if not _check_sandbox(ds):
        return 2
    env = dict(os.environ)
    env["AUTOPACK_STATE_DIR"] = str(ds.state_path)
    cassette = Path(args.cassette).resolve() if args.cassette else EXAMPLE / "cassette.jsonl"
    if args.live or getattr(args, "script", None):
        if not args.cassette:
            cassette = ds.state_path / f"cassette-{int(time.time())}.jsonl"
        env["AUTOPACK_LLM_MODE"] = "record"
        if getattr(args, "script", None):
            env["AUTOPACK_LLM_SCRIPT"] = str(Path(args.script).resolve())
        elif not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("OPENAI_API_KEY")):
            print("autopack: --live needs ANTHROPIC_API_KEY or OPENAI_API_KEY", flush=True)
            return 2
    else:
        if not cassette.exists():
            print(f"autopack: cassette not found: {cassette}", flush=True)
            return 2
        env["AUTOPACK_LLM_MODE"] = "replay"
    env["AUTOPACK_CASSETTE"] = str(cassette)
    port = args.port or free_port()
    env["AUTOPACK_API_URL"] = f"http://127.0.0.1:{port}"

    ds.state_path.mkdir(parents=True, exist_ok=True)
    upgrade(ds.db_url)
    repo_root = ds.state_path / "repos"
    repo_root.mkdir(parents=True, exist_ok=True)
    repo = create_target_repo(repo_root / f"calc-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    with session_scope(ds.db_url) as s:
        from sqlalchemy import select

        project = s.scalar(select(Project).where(Project.name == DEMO_PROJECT))
        if project is None:
            s.add(Project(name=DEMO_PROJECT, repo_path=str(repo), base_branch="main"))
        else:
            project.repo_path, project.base_branch = str(repo), "main"
    _say(f"demo repository: {repo}")
    _say(f"model: {'recording to ' if env['AUTOPACK_LLM_MODE'] == 'record' else 'replaying '}{cassette}")
    _say("starting web, workers and beat (local profile) …")
    from autopack.procs import stop_on_signals

    stop_on_signals()
    group = _start_cluster(ds, port, env, quiet=True)
    try:
        client = ApiClient(f"http://127.0.0.1:{port}")
        plan = load_plan_text((EXAMPLE / "plan.yaml").read_text(encoding="utf-8"))
        plan["project"] = DEMO_PROJECT
        created = client.submit(plan)
        _say(f"run {created['id']} queued; following it:")
        run = follow(client, created["id"], timeout=600)
        postmortem = wait_postmortem(client, run["id"])
    finally:
        group.stop()
    if postmortem:
        path = ds.state_path / "postmortems" / f"{run['id']}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(postmortem)
        _say(f"postmortem: {path}")
    _print_run(run)
    _say(f"done in {time.monotonic() - started:.1f}s · inspect with: git -C {repo} log --format='%h %s%n%(trailers)' {run['branch']}")
    if args.json:
        print(json.dumps(summary(run, repo)), flush=True)
    return 0 if run["state"] == "DONE_SUCCESS" else 1
