"""CLI commands that do not need a cluster: projects, and clear errors for the client commands."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from autopack.cli import main
from autopack.procs import free_port
from autopack.settings import ROOT, Settings
from web import create_app


@pytest.fixture()
def state(local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(local_settings.state_path))
    return local_settings


def test_project_add_list_update(state: Settings, demo_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    assert "registered" in capsys.readouterr().out
    subprocess.run(["git", "-C", str(demo_repo), "branch", "-q", "dev"], check=True)
    assert main(["project", "add", "demo", str(demo_repo), "--base-branch", "dev"]) == 0
    assert "updated" in capsys.readouterr().out
    assert main(["project", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"demo\t{demo_repo}\tdev"


def test_project_add_refusals(state: Settings, demo_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["project", "add", "x", str(plain)]) == 2
    assert "is not a git repository" in capsys.readouterr().err
    assert main(["project", "add", "x", str(demo_repo), "--base-branch", "nope"]) == 2
    assert "branch 'nope' does not exist" in capsys.readouterr().err


def test_client_commands_against_a_real_server(state: Settings, demo_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    sent: list[object] = []
    server = make_server("127.0.0.1", 0, create_app(state, enqueue=sent.extend, broker_check=lambda: None), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = f"http://127.0.0.1:{server.server_port}"
    plan = str(ROOT / "examples" / "demo" / "plan.yaml")
    try:
        capsys.readouterr()
        assert main(["run", plan, "--dry-run", "--api", api]) == 0
        assert '"phase_id": "stats"' in capsys.readouterr().out and sent == []
        assert main(["run", plan, "--api", api]) == 0
        run_id = capsys.readouterr().out.split()[1]
        assert len(sent) == 1
        assert main(["status", run_id, "--api", api]) == 0
        assert f"run {run_id} (demo): QUEUED" in capsys.readouterr().out
        assert main(["cancel", run_id, "--api", api]) == 0
        assert "CANCELLED" in capsys.readouterr().out
        assert main(["cancel", run_id, "--api", api]) == 2
        assert "HTTP 409" in capsys.readouterr().err
        assert main(["status", "nope", "--api", api]) == 2
        assert "HTTP 404" in capsys.readouterr().err
        assert main(["run", plan, "--project", "ghost", "--api", api]) == 2
        assert "HTTP 404" in capsys.readouterr().err
        bad = demo_repo / "bad.yaml"
        bad.write_text("project: demo\ntiers: [{id: t, phases: [{id: p, category: c, scope: [a]}]}]\n")
        assert main(["run", str(bad), "--api", api]) == 2
        assert "field: tiers.0.phases.0.goal" in capsys.readouterr().err
    finally:
        server.shutdown()
        thread.join()
    assert main(["status", "x", "--api", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the API" in capsys.readouterr().err
