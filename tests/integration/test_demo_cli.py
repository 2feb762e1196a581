"""The README's first command, as a user runs it: `autopack demo --json` in a fresh folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopack.workspace.git import Git
from autopack.workspace.worktree import branch_log

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def autopack(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopack.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    env["AUTOPACK_STATE_DIR"] = str(tmp_path / ".autopack")
    return env


def test_demo_replays_to_done_success(tmp_path: Path) -> None:
    proc = autopack(["demo", "--json"], tmp_path, clean_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"run_id", "state", "repo", "branch", "base_branch", "phases", "tokens", "cost_usd"}
    assert summary["state"] == "DONE_SUCCESS"
    assert summary["branch"] == f"autopack/{summary['run_id']}"
    assert [(p["id"], p["state"], p["attempts"]) for p in summary["phases"]] == [
        ("stats", "COMPLETE", 2), ("parse", "COMPLETE", 2), ("cli", "COMPLETE", 1)]
    assert summary["tokens"] > 0 and summary["cost_usd"] > 0

    repo = Path(summary["repo"])
    git = Git(repo)
    # Base branch unchanged: still the single import commit.
    assert [e["subject"] for e in git.log("main")] == ["calc: initial import"]
    log = branch_log(repo, summary["base_branch"], summary["branch"])
    assert [e["trailers"]["Autopack-Phase"] for e in log] == ["stats", "parse", "cli"]
    assert [e["trailers"]["Autopack-Attempt"] for e in log] == ["2", "2", "1"]
    assert {e["trailers"]["Autopack-Run"] for e in log} == {summary["run_id"]}
    # The progress was shown as it happened.
    assert "phase.retry" in proc.stdout and "run.finished" in proc.stdout
    # The event dispatcher wrote the postmortem when the run ended.
    pm = tmp_path / ".autopack" / "demo" / "postmortems" / f"{summary['run_id']}.md"
    text = pm.read_text()
    assert text.startswith(f"# Postmortem of run {summary['run_id']} (demo)")
    assert "phase parse: test_failure fixed by attempt 2" in text


def test_demo_with_a_cassette_that_does_not_match_fails_loudly(tmp_path: Path) -> None:
    from autopack.settings import ROOT

    lines = (ROOT / "examples" / "demo" / "cassette.jsonl").read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:1]) + "\n")  # only the first exchange
    proc = autopack(["demo", "--json", "--cassette", str(broken)], tmp_path, clean_env(tmp_path))
    assert proc.returncode == 1
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["state"] == "DONE_FAILED_INFRASTRUCTURE"
    assert "no recorded exchange" in proc.stdout


def test_demo_learns_in_run_one_and_applies_it_in_run_two(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    proc = autopack(["demo", "--runs", "2", "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, second = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert first["state"] == second["state"] == "DONE_SUCCESS"
    assert first["failed_attempts"] == 2 and second["failed_attempts"] == 0
    assert [p["attempts"] for p in second["phases"]] == [1, 1, 1]
    assert second["rules_applied"] and second["rules_applied"] == first["rules_applied"]
    assert 0 < second["rule_tokens"] < second["builder_prompt_tokens"]

    listed = autopack(["rules", "--project", "demo", "--json"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    rules = json.loads(listed.stdout)["rules"]
    assert [r["id"] for r in rules] == second["rules_applied"]
    rule = rules[0]
    assert rule["status"] == "active" and rule["scope"] == "calc/**"
    assert rule["provenance"]["runs"] == [first["run_id"]] and len(rule["provenance"]["hints"]) == 2
    assert rule["effect"]["carried_phases"] == 4 and rule["effect"]["carried_failures"] == 0
    assert rule["effect"]["other_phases"] == 0  # the two phases it was learned from are no control
    # The prompt record of run 2's phases names the rule.
    from sqlalchemy import select

    from autopack.db.models import ModelCall
    from autopack.db.session import session_scope

    with session_scope(f"sqlite:///{tmp_path / '.autopack' / 'autopack.sqlite'}") as s:
        calls = s.scalars(select(ModelCall).where(ModelCall.run_id == second["run_id"], ModelCall.role == "builder")).all()
        assert [c.rules for c in calls] == [[rule["id"]]] * 3
    pm = (tmp_path / ".autopack" / "demo" / "postmortems" / f"{first['run_id']}.md").read_text()
    assert "- learned: rule" in pm and "calc/**" in pm
    analysis = autopack(["rules", "analyze", "--project", "demo"], tmp_path, env)
    assert "rules: 1" in analysis.stdout and "test_failure:" in analysis.stdout
