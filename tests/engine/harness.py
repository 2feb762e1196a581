"""Test support: engine services with a scripted model and a step driver that plays the queues
in-process, one step at a time, in the order a single worker would take them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autopack.config import load_config
from autopack.db.models import Project
from autopack.db.session import session_scope
from autopack.engine import runs
from autopack.engine.services import Services
from autopack.engine.steps import Step
from autopack.llm.base import LLMRequest, LLMResponse
from autopack.llm.cassette import ScriptedClient
from autopack.plan import Plan, load_plan_file, parse_plan
from autopack.prompts import PromptLibrary
from autopack.sandbox.runner import BwrapSandbox
from autopack.settings import ROOT, Settings

DEMO = ROOT / "examples" / "demo"
Respond = Callable[[LLMRequest], "str | LLMResponse"]


def demo_model() -> Respond:
    from autopack.engine.services import load_script

    return load_script(DEMO / "model.py")


def make_services(settings: Settings, respond: Respond, config=None) -> tuple[Services, ScriptedClient]:  # type: ignore[no-untyped-def]
    client = ScriptedClient(respond)
    services = Services(
        settings=settings,
        config=config or load_config(settings.config_dir),
        prompts=PromptLibrary(settings.prompts_dir),
        sandbox=BwrapSandbox(),
        clients=lambda _model: client,
    )
    return services, client


def on_postgres(pg_url: str, tmp_path: Path, repo: Path) -> tuple[Settings, Services]:
    """Settings on the fresh PostgreSQL database ``pg_url`` (migrated), services with a silent model,
    and ``repo`` registered as project ``demo``."""
    from autopack.db.migrate import upgrade

    settings = Settings(state_dir=tmp_path / "state", profile="local", database_url=pg_url)
    settings.state_path.mkdir(parents=True)
    upgrade(pg_url)
    services, _ = make_services(settings, lambda req: "")
    register(settings, repo)
    return settings, services


def at_once(*steps: Callable[[Callable[[], None]], None], timeout_s: float = 30.0) -> list[BaseException]:
    """Run each step in a thread of its own. A step is given ``meet``, which returns once every step
    has called it: what comes after it in each step runs at the same time. Returns what the steps
    raised (a step still running after ``timeout_s`` counts as a ``TimeoutError``)."""
    barrier = threading.Barrier(len(steps))
    errors: list[BaseException] = []

    def run(step: Callable[[Callable[[], None]], None]) -> None:
        try:
            step(lambda: barrier.wait(timeout=10))
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(step,)) for step in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    errors += [TimeoutError(f"a step still runs after {timeout_s} s") for t in threads if t.is_alive()]
    return errors


def commit_all(repo: Path, message: str, files: dict[str, str] | None = None) -> None:
    """Write ``files`` (relative path: text) into ``repo`` and commit everything there."""
    from autopack.demo import GIT_ENV

    for name, text in (files or {}).items():
        (repo / name).write_text(text)
    env = {**GIT_ENV, "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, env=env, check=True)


def register(settings: Settings, repo: Path, name: str = "demo") -> None:
    with session_scope(settings.db_url) as s:
        s.add(Project(name=name, repo_path=str(repo), base_branch="main"))


def demo_plan(**phase_overrides: Any) -> Plan:
    plan = load_plan_file(DEMO / "plan.yaml")
    if not phase_overrides:
        return plan
    data = plan.model_dump()
    for tier in data["tiers"]:
        for ph in tier["phases"]:
            ph.update(phase_overrides.get(ph["id"], {}))
    return parse_plan(data)


def stats_plan(category: str, **extra: Any) -> Plan:
    """A one-phase plan (the demo's ``stats``) in ``category``."""
    return parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [{
        "id": "stats", "goal": "Add calc/stats.py with mean and median.", "category": category, "complexity": "low",
        "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"], "acceptance_tests": ["tests/test_stats.py"], **extra}]}]})


def require_audit(services: Services, *, max_replans: int | None = None) -> None:
    """``feature`` phases get 3 attempts and a required audit (and ``max_replans``, if given)."""
    strategy = services.config.strategy.model_copy(deep=True)
    strategy.categories["feature"] = {"max_attempts": 3, "audit": "required"}
    if max_replans is not None:
        strategy.run.max_replans = max_replans
    services.config = services.config.model_copy(update={"strategy": strategy})


def driven_stats_run(services: Services) -> str:
    """A :func:`stats_plan` run (``feature``), submitted and driven to its end."""
    run_id = submit(services, stats_plan("feature"))
    drive(services, ("start_run", run_id))
    return run_id


def required_audit_run(settings: Settings, respond: Respond, repo: Path, *, max_replans: int | None = None) -> tuple[Services, str]:
    """Services with :func:`require_audit`, the repository registered, and a driven stats run."""
    services, _ = make_services(settings, respond)
    require_audit(services, max_replans=max_replans)
    register(settings, repo)
    return services, driven_stats_run(services)


def stats_model(req: LLMRequest) -> str | LLMResponse:
    """The demo model with a Builder that gets ``stats`` right first time and a judge that approves."""
    good = demo_model()
    if req.system.startswith("You are the Builder"):
        return str(good.__globals__["STATS"])
    if req.system.startswith("You are the Judge"):
        return '{"verdict": "approve", "reasoning": "fine"}'
    return good(req)


def submit(services: Services, plan: Plan) -> str:
    with session_scope(services.db_url) as s:
        return runs.create_run(s, plan, services.config).id


def drive(services: Services, first: Step, limit: int = 200) -> list[Step]:
    """Run steps until none is left, each as a step row under a lease exactly as a worker does;
    return the (name, arg) of the steps in the order they ran."""
    from autopack.db.models import StepRow
    from autopack.engine.runner import create_step, execute

    run_id = first[1] if first[0] in ("start_run", "baseline") else None
    if run_id is None:
        raise ValueError("drive starts from a run-level step")
    queue = [create_step(services.db_url, str(run_id), first[0], first[1])]
    done: list[Step] = []
    while queue:
        step_id, _name = queue.pop(0)
        with session_scope(services.db_url) as s:
            row = s.get(StepRow, step_id)
            assert row is not None
            done.append((row.name, row.arg))
        assert len(done) <= limit, f"pipeline did not settle after {limit} steps: {done[-10:]}"
        queue += execute(services, step_id, owner="test-driver")
    return done


def call_step(services: Services, run_id: str, name: str, arg: Any) -> list[Step]:
    """Run one step (a fresh step row) as a worker would; return the (name, arg) steps it created."""
    from autopack.db.models import StepRow
    from autopack.engine.runner import INT_ARGS, create_step, execute

    step_id, _ = create_step(services.db_url, run_id, name, arg)
    out = []
    for sid, _n in execute(services, step_id, owner="test-driver"):
        with session_scope(services.db_url) as s:
            row = s.get(StepRow, sid)
            assert row is not None
            out.append((row.name, int(row.arg) if row.name in INT_ARGS else row.arg))
    return out


def view(services: Services, run_id: str) -> dict[str, Any]:
    with session_scope(services.db_url) as s:
        return runs.run_view(s, runs.get_run(s, run_id))


def phase(view_: dict[str, Any], key: str) -> dict[str, Any]:
    for tier in view_["tiers"]:
        for ph in tier["phases"]:
            if ph["id"] == key:
                return ph
    raise KeyError(key)


def as_worker_with_clock(offset: str, url: str, code: str) -> str:
    """Run ``code`` (with ``url`` bound, from the repository's root) in a process whose clock is off
    by ``offset`` (faketime's syntax: ``"+10 minutes"``); returns what it printed."""
    found = shutil.which("faketime")
    if found is None:
        msg = "faketime (Debian package faketime; scripts/setup.sh installs it as root) is needed to skew a worker's clock"
        if os.environ.get("AUTOPACK_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    program = f"url = {url!r}\n{code}"
    return subprocess.run([found, offset, sys.executable, "-c", program], capture_output=True, text=True,
                          check=True, timeout=60, cwd=ROOT).stdout.strip()
