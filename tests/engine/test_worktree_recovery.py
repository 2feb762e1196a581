"""What a git process killed mid-write leaves behind does not end a run: a stale index.lock in the
run's worktree (the build step recreates the worktree from the repository), a stale lock on the
run's branch (decide removes a lock of the run's own branch older than a minute and moves it) or on
a candidate's anchor ref (the build removes it the same way)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.engine.harness import demo_model, demo_plan, drive, make_services, register, submit, view

pytestmark = pytest.mark.sandbox


def _stale_lock(path: Path) -> Path:
    """An empty lock file an hour old: what a git process SIGKILLed while holding it leaves."""
    import os
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def _run_demo(local_settings, demo_repo: Path, respond, run: dict[str, str]) -> dict:  # type: ignore[no-untyped-def]
    """Submit the demo plan with ``respond`` as the model, drive it to its end, return its view;
    ``run["id"]`` is set before the first step, for ``respond`` to use."""
    services, _ = make_services(local_settings, respond)
    register(local_settings, demo_repo)
    run["id"] = submit(services, demo_plan())
    drive(services, ("start_run", run["id"]))
    return view(services, run["id"])


def test_a_stale_index_lock_in_the_worktree_costs_no_attempt(local_settings, demo_repo: Path) -> None:
    good = demo_model()
    builds: list[str] = []
    run: dict[str, str] = {}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            builds.append(req.model)
            if len(builds) == 2:
                # As if the previous build's worker had been SIGKILLed with its git child mid-write.
                wt = local_settings.worktrees_dir / run["id"]
                git_dir = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-dir"], cwd=wt,
                                         capture_output=True, text=True, check=True).stdout.strip()
                (Path(git_dir) / "index.lock").write_bytes(b"")
        return good(req)

    v = _run_demo(local_settings, demo_repo, respond, run)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert len(builds) >= 2
    for tier in v["tiers"]:
        for ph in tier["phases"]:
            assert all(a["failure_class"] != "edit_refused" for a in ph["attempt_details"]), ph["attempt_details"]
    wt = local_settings.worktrees_dir / run["id"]
    git_dir = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-dir"], cwd=wt,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert not (Path(git_dir) / "index.lock").exists()


def test_a_stale_lock_on_the_run_branch_is_removed_and_the_phase_completes(local_settings, demo_repo: Path) -> None:
    from autopack.db.models import Run
    from autopack.db.session import session_scope

    good = demo_model()
    audits: list[int] = []
    run: dict[str, str] = {}
    locks: list[Path] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Auditor"):
            audits.append(1)
            if len(audits) == 2:
                # As if the previous decide's git update-ref had been SIGKILLed holding the branch's lock.
                with session_scope(local_settings.db_url) as s:
                    r = s.get(Run, run["id"])
                    assert r is not None
                    branch = r.branch
                locks.append(_stale_lock(demo_repo / ".git" / "refs" / "heads" / f"{branch}.lock"))
        return good(req)

    v = _run_demo(local_settings, demo_repo, respond, run)
    assert locks, "the plan had fewer than two audits"
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert not locks[0].exists()


def test_a_stale_lock_on_a_candidates_anchor_costs_no_attempt(local_settings, demo_repo: Path) -> None:
    """A build whose git was killed while anchoring its candidate leaves that ref's lock; the
    redelivered build anchors the same candidate (same deterministic commit) past the old lock."""
    good = demo_model()
    builds: list[int] = []
    run: dict[str, str] = {}
    locks: list[Path] = []

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            builds.append(1)
            if len(builds) == 1:
                # The anchor the first phase's first attempt is about to set.
                from autopack.plan import load_plan_file
                from tests.engine.harness import DEMO

                first = load_plan_file(DEMO / "plan.yaml").tiers[0].phases[0].id
                locks.append(_stale_lock(demo_repo / ".git" / "refs" / "autopack" / run["id"] / first / "1.lock"))
        return good(req)

    v = _run_demo(local_settings, demo_repo, respond, run)
    assert locks and not locks[0].exists()
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    first = v["tiers"][0]["phases"][0]
    assert first["attempt_details"][0]["failure_class"] != "edit_refused", first["attempt_details"]
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", f"refs/autopack/{run['id']}/"], cwd=demo_repo,
                          capture_output=True, text=True, check=True).stdout.split()
    assert f"refs/autopack/{run['id']}/{locks[0].parent.name}/1" in refs, refs


def test_start_run_redelivered_after_the_user_committed_on_the_base_branch(local_settings, demo_repo: Path) -> None:
    """The first delivery of start_run made the run's branch at main's tip and died before the
    database recorded the base; the user then committed on main. The second delivery read main's new
    tip, found the branch already there, and failed the run (DONE_FAILED_SETUP)."""
    from tests.engine.harness import commit_all, stats_model, stats_plan

    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    first_base = subprocess.run(["git", "-C", str(demo_repo), "rev-parse", "refs/heads/main"], capture_output=True, text=True,
                                check=True).stdout.strip()
    subprocess.run(["git", "-C", str(demo_repo), "update-ref", f"refs/heads/autopack/{run_id}", first_base], check=True)
    commit_all(demo_repo, "user work", {"NOTES.md": "mine\n"})
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert v["base_commit"] == first_base  # the base the branch was made from, not main's new tip


def test_git_failing_while_committing_a_candidate_uses_no_attempt(local_settings, demo_repo: Path) -> None:
    """A lock another git process holds (fresh, so not taken for a killed one's) on the candidate's
    anchor: git failed, not the edit. It was recorded as the edit refused, used an attempt and went
    back to the Builder as feedback about its edit."""
    from autopack.plan import load_plan_file
    from tests.engine.harness import DEMO

    good = demo_model()
    builds: list[int] = []
    run: dict[str, str] = {}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.system.startswith("You are the Builder"):
            builds.append(1)
            if len(builds) == 1:  # the anchors of the first phase's first three attempts are held
                first = load_plan_file(DEMO / "plan.yaml").tiers[0].phases[0].id
                for number in (1, 2, 3):
                    lock = demo_repo / ".git" / "refs" / "autopack" / run["id"] / first / f"{number}.lock"
                    lock.parent.mkdir(parents=True, exist_ok=True)
                    lock.write_text("")
        return good(req)

    v = _run_demo(local_settings, demo_repo, respond, run)
    first = v["tiers"][0]["phases"][0]
    details = first["attempt_details"]
    assert first["max_attempts"] == 3 and [d["failure_class"] for d in details[:3]] == ["infrastructure"] * 3, details
    assert all("git failed while committing" in d["failure"] for d in details[:3])
    # Three git failures used none of the phase's three attempts: the fourth completes it.
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    assert len(details) == 4 and details[3]["decision"] == "complete"
