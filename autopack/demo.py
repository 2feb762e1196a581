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
    """The demo shares the state folder's database (so `autopack rules --project demo` and
    `autopack status` see it) but has a private broker folder, so workers of an `autopack up`
    running beside it never take its tasks."""
    return settings.model_copy(update={"broker_folder": settings.state_path / "demo" / "broker"})


def reset_demo_project(session: Any) -> None:
    """The demo starts from a clean slate: the demo project's learned hints and rules are cleared
    (its earlier runs stay), so every demo learns the same way and replays the same cassette."""
    from sqlalchemy import delete, select

    from autopack.db.models import Hint, Project, Rule

    project = session.scalar(select(Project).where(Project.name == DEMO_PROJECT))
    if project is not None:
        session.execute(delete(Rule).where(Rule.project_id == project.id))
        session.execute(delete(Hint).where(Hint.project_id == project.id))


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
    from autopack.cli import WaitTimeout, _check_sandbox, _print_run, _start_cluster, follow
    from autopack.client import ApiClient, ClientError
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
    env["AUTOPACK_BROKER_FOLDER"] = str(ds.broker_dir)
    cassette = Path(args.cassette).resolve() if args.cassette else EXAMPLE / "cassette.jsonl"
    if args.live or getattr(args, "script", None):
        if not args.cassette:
            cassette = ds.state_path / "demo" / f"cassette-{int(time.time())}.jsonl"
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
    repo_root = ds.state_path / "demo" / "repos"
    repo_root.mkdir(parents=True, exist_ok=True)
    repo = create_target_repo(repo_root / f"calc-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    with session_scope(ds.db_url) as s:
        from sqlalchemy import select

        reset_demo_project(s)

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
    finished: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        client = ApiClient(f"http://127.0.0.1:{port}", token=ds.token)  # its web takes the token from the same environment
        plan = load_plan_text((EXAMPLE / "plan.yaml").read_text(encoding="utf-8"))
        plan["project"] = DEMO_PROJECT
        for n in range(1, args.runs + 1):
            created = client.submit(plan)
            _say(f"run {n} of {args.runs}: {created['id']} queued; following it:")
            run = follow(client, created["id"], timeout=600, outage_s=15)  # its own web process: not redeployed
            postmortem = wait_postmortem(client, run["id"])
            if postmortem:
                path = ds.state_path / "demo" / "postmortems" / f"{run['id']}.md"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(postmortem)
                _say(f"postmortem: {path}")
            finished.append((run, learning_figures(ds, run["id"])))
            _print_run(run)
    except (ClientError, WaitTimeout) as exc:
        _say(f"the demo stopped: {exc}")
        return 1
    finally:
        group.stop()
    _say(f"done in {time.monotonic() - started:.1f}s · inspect with: git -C {repo} log --format='%h %s%n%(trailers)' {finished[-1][0]['branch'] if finished else 'main'}")
    for run, figures in finished:
        line = summary(run, repo) | figures
        if args.json:
            print(json.dumps(line), flush=True)
        elif args.runs > 1:
            _say(f"run {run['id']}: {run['state']}, failed attempts {figures['failed_attempts']}, rules applied {figures['rules_applied']}, "
                 f"rule tokens {figures['rule_tokens']} of {figures['builder_prompt_tokens']} Builder prompt tokens")
    return 0 if finished and all(r["state"] == "DONE_SUCCESS" for r, _ in finished) else 1


def learning_figures(settings: Settings, run_id: str) -> dict[str, Any]:
    """What the run learned and used: failed attempts, rules its prompts carried, their token share."""
    from sqlalchemy import select

    from autopack.db.models import Attempt, ModelCall
    from autopack.db.session import session_scope

    with session_scope(settings.db_url) as s:
        failed = len(s.scalars(select(Attempt.id).where(Attempt.run_id == run_id, Attempt.failure_class.is_not(None))).all())
        calls = s.scalars(select(ModelCall).where(ModelCall.run_id == run_id, ModelCall.role == "builder")).all()
        rules = sorted({r for c in calls for r in (c.rules or [])})
        return {"failed_attempts": failed, "rules_applied": rules, "rule_tokens": sum(c.rules_tokens for c in calls),
                "builder_prompt_tokens": sum(c.input_tokens for c in calls)}
