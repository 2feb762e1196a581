"""CLI commands that do not need a cluster: projects, clear errors for the client commands, and the
reconciler run by hand."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update
from werkzeug.serving import make_server

from autopack.cli import main
from autopack.db.models import Event, Run, StepRow
from autopack.db.session import session_scope
from autopack.engine.leases import claim, now_utc
from autopack.engine.runner import create_step
from autopack.events.dispatch import dispatch_pending
from autopack.procs import free_port
from autopack.settings import ROOT, Settings
from tasks.app import app
from tests.engine.harness import demo_plan, make_services, register, submit
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
    for name in ("", "a/b", " sp ", ".x"):  # names no plan or URL could use
        assert main(["project", "add", name, str(demo_repo)]) == 2
        assert "must be 1-64 letters" in capsys.readouterr().err
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(demo_repo), str(bare)], check=True)
    assert main(["project", "add", "x", str(bare)]) == 2
    assert "is a bare repository: give a clone with a work tree" in capsys.readouterr().err


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
        out = capsys.readouterr().out
        assert f"run {run_id} (demo): QUEUED" in out and "worst case" not in out
        # A call whose worker died unreported is counted at its worst case, and status says so.
        from autopack.engine.ledger import charge_orphans, reserve

        with session_scope(state.db_url) as s:
            reserve(s, run_id, None, 700, 0.07, None)
            s.execute(update(Run).where(Run.id == run_id).values(state="DONE_FAILED_INFRASTRUCTURE"))
        with session_scope(state.db_url) as s:
            assert charge_orphans(s) == 1
        assert main(["status", run_id, "--api", api]) == 0
        assert ("of which 1 call(s) counted at their worst case (700 tokens, $0.0700): their worker died before "
                "reporting the usage") in capsys.readouterr().out
        with session_scope(state.db_url) as s:  # back to a cancellable run for what follows
            s.execute(update(Run).where(Run.id == run_id).values(state="QUEUED"))
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
        # A run id with a space or '?' names that run (which does not exist), not another URL or an outage.
        assert main(["status", "a b", "--api", api]) == 2
        assert "HTTP 404" in capsys.readouterr().err
        assert main(["status", f"{run_id}?junk", "--api", api]) == 2
        assert "HTTP 404" in capsys.readouterr().err
        # A YAML date is the text the author wrote; a file that is not UTF-8 is named.
        dated = demo_repo / "dated.yaml"
        dated.write_text((ROOT / "examples" / "demo" / "plan.yaml").read_text().replace("name: statistics for calc", "name: 2024-06-01"))
        assert main(["run", str(dated), "--dry-run", "--api", api]) == 0
        capsys.readouterr()
        latin = demo_repo / "latin.yaml"
        latin.write_bytes("project: demo\nname: café\n".encode("latin-1"))
        assert main(["run", str(latin), "--api", api]) == 2
        assert "is not UTF-8" in capsys.readouterr().err
        assert main(["submit-edits", run_id, "stats", str(latin), "--api", api]) == 2
        assert "is not UTF-8" in capsys.readouterr().err
    finally:
        server.shutdown()
        thread.join()
    assert main(["status", "x", "--api", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the API" in capsys.readouterr().err


def test_reconcile_ends_overdue_runs_and_requeues_lost_steps_on_the_broker(state: Settings, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The reconciler runs no tests: it works on a host without bubblewrap.
    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))
    monkeypatch.setenv("AUTOPACK_SANDBOX", "bwrap")
    services, _ = make_services(state, lambda req: "")
    register(state, tmp_path / "repo")
    overdue, live = submit(services, demo_plan()), submit(services, demo_plan())
    lost, _ = create_step(state.db_url, live, "build", 1)
    overdue_step, _ = create_step(state.db_url, overdue, "probe", 2)
    long_ago = now_utc() - timedelta(hours=7)
    with session_scope(state.db_url) as s:
        s.execute(update(Run).where(Run.id.in_([overdue, live])).values(state="RUNNING"))
        s.execute(update(Run).where(Run.id == overdue).values(created_at=long_ago))
        s.execute(update(Event).where(Event.run_id == overdue).values(created_at=long_ago))  # never dispatched
        # The live run's step: claimed by a worker that died (lease expired) after its last enqueue.
        s.execute(update(StepRow).where(StepRow.id == lost).values(
            fence=1, deliveries=1, lease_owner="dead", lease_expires_at=now_utc() - timedelta(seconds=5), enqueued_at=long_ago))
    # The command sends on the process's Celery app; its filesystem broker folder is where messages land.
    queue_dir = Path(app.conf.broker_transport_options["data_folder_out"])
    before = set(queue_dir.iterdir())

    def sent() -> list[tuple[str, str, list[object]]]:
        out = []
        for path in sorted(set(queue_dir.iterdir()) - before):
            msg = json.loads(path.read_text())
            out.append((path.name.split(".", 1)[1], msg["headers"]["task"], json.loads(base64.b64decode(msg["body"]))[0]))
        return out

    capsys.readouterr()
    t0 = now_utc()
    try:
        assert main(["reconcile", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        messages = sent()
        assert report == {"requeued": [[lost, "build"]], "timed_out": [overdue], "closed_steps": 1,
                          "charged_reservations": 0, "undispatched_runs": [overdue]}
        assert sorted(messages) == sorted([("build.msg", "autopack.build_phase", [lost]),
                                           ("events.msg", "autopack.events.dispatch", [overdue])])
        with session_scope(state.db_url) as s:
            run = s.get(Run, overdue)
            assert run is not None and run.state == "DONE_FAILED_TIMEOUT"
            assert run.failure_reason == "run exceeded its maximum runtime of 21600s"
            assert s.scalar(select(Event.type).where(Event.run_id == overdue).order_by(Event.seq.desc()).limit(1)) == "run.finished"
            step = s.get(StepRow, lost)
            assert step is not None and step.done_at is None
            enqueued = step.enqueued_at if step.enqueued_at.tzinfo else step.enqueued_at.replace(tzinfo=t0.tzinfo)
            assert enqueued >= t0
            closed = s.get(StepRow, overdue_step)
            assert closed is not None and closed.outcome == "run_finished"

        # A worker took the re-enqueued step and the dispatcher ran: the plain form reports a quiet pass.
        assert claim(state.db_url, lost, "worker", 60) is not None
        with session_scope(state.db_url) as s:
            s.execute(update(Event).values(dispatched=True))
        assert main(["reconcile"]) == 0
        assert capsys.readouterr().out == (
            "re-enqueued 0 step(s), ended 0 overdue run(s), closed 0 step(s) of finished runs, charged 0 orphaned "
            "budget reservation(s), re-dispatched the events of 0 run(s)\n")
        assert len(sent()) == len(messages)
    finally:
        for path in set(queue_dir.iterdir()) - before:  # leave the shared broker folder as it was
            path.unlink()


def test_cleanup_removes_finished_runs_worktrees_by_hand(state: Settings, demo_repo: Path, capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from autopack.workspace import worktree as wt

    temp = tmp_path / "system-temp"  # the system's temp folder, as tempfile sees it
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    services, _ = make_services(state, lambda req: "")
    register(state, demo_repo)
    finished, young = submit(services, demo_plan()), submit(services, demo_plan())
    with session_scope(state.db_url) as s:
        s.execute(update(Run).where(Run.id == finished).values(state="DONE_SUCCESS", finished_at=now_utc() - timedelta(minutes=30)))
        s.execute(update(Run).where(Run.id == young).values(state="CANCELLED", finished_at=now_utc()))
    paths = {r: wt.ensure_worktree(demo_repo, state.worktrees_dir / r, "main") for r in (finished, young)}
    capsys.readouterr()
    assert main(["cleanup"]) == 0  # the default retention is an hour: nothing is old enough
    assert capsys.readouterr().out.strip() == ("removed the worktrees of 0 finished run(s); kept 2; left 0 folder(s) of unknown runs "
                                               "alone; removed 0 temp folder(s) killed workers left")
    # A sandbox folder a killed worker left a day ago goes too (--older-than is the worktrees' only).
    left = temp / "autopack-sandbox-left"
    left.mkdir()
    day_ago = time.time() - 86400
    os.utime(left, (day_ago, day_ago))
    assert main(["cleanup", "--older-than", "600", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": [finished], "kept": 1, "unknown": [], "failed": [],
                                                   "temp_removed": ["autopack-sandbox-left"]}
    assert not paths[finished].exists() and paths[young].is_dir() and not left.exists()
    with pytest.raises(SystemExit):
        main(["cleanup", "--older-than", "soon"])
    assert "not a number of seconds" in capsys.readouterr().err


def test_flaky_lists_known_flaky_tests_and_ages_them_by_hand(state: Settings, demo_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autopack.db.models import FlakyTest, Project

    register(state, demo_repo)
    long_ago, now = now_utc() - timedelta(days=31), now_utc()
    with session_scope(state.db_url) as s:
        pid = s.scalar(select(Project.id))
        for test_id, when in (("tests/t.py::old", long_ago), ("tests/t.py::new", now)):
            s.add(FlakyTest(project_id=pid, test_id=test_id, state="quarantined", state_reason="flaky in 2 runs", flaky_count=3,
                            runs=["r1", "r2"], passes_since_flaky=4, first_seen_at=when, last_flaky_at=when, state_changed_at=when))
    capsys.readouterr()
    assert main(["flaky"]) == 0
    out = capsys.readouterr().out
    assert "demo: 2 known-flaky test record(s)" in out
    assert "[quarantined] tests/t.py::new: flaky 3x in all, in 2 run(s) since it was last cleared; 4 first-try pass(es) since" in out
    assert main(["flaky", "age", "--project", "demo"]) == 2
    assert "takes no --project or --state" in capsys.readouterr().err
    assert main(["flaky", "age", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cleared": ["demo: tests/t.py::old"], "forgotten": [], "kept": 2}
    assert main(["flaky", "--project", "demo", "--state", "cleared", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["test"], t["state"], t["reason"]) for t in listed["tests"]] == [("tests/t.py::old", "cleared", "not flaky for 30 days")]
    assert main(["flaky", "--project", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_flaky_quarantine_and_clear_by_hand(state: Settings, demo_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register(state, demo_repo)
    test_id = "tests/t.py::test_x[a/b]"
    capsys.readouterr()
    assert main(["flaky", "quarantine", test_id, "--project", "demo", "--reason", "flakes on the CI box"]) == 0
    assert capsys.readouterr().out.strip() == f"demo: {test_id} is quarantined (by hand: flakes on the CI box)"
    assert main(["flaky", "--project", "demo", "--state", "quarantined", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["tests"]
    assert [(t["test"], t["reason"], t["flaky_count"]) for t in listed] == [(test_id, "by hand: flakes on the CI box", 0)]
    assert main(["flaky", "clear", test_id, "--project", "demo", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["project"] == "demo" and (shown["test"]["test"], shown["test"]["state"], shown["test"]["reason"]) == (test_id, "cleared", "by hand")
    # Refusals: exit 2 with the reason on stderr, nothing changed.
    assert main(["flaky", "clear", "tests/t.py::never", "--project", "demo"]) == 2
    assert "has no known-flaky record to clear in project 'demo'" in capsys.readouterr().err
    assert main(["flaky", "quarantine", test_id, "--project", "nope"]) == 2
    assert "'nope' is not registered" in capsys.readouterr().err
    for argv in (["flaky", "quarantine", test_id], ["flaky", "clear", "--project", "demo"],
                 ["flaky", "quarantine", test_id, "--project", "demo", "--state", "cleared"]):
        assert main(argv) == 2, argv
        assert "takes a test id and --project" in capsys.readouterr().err
    assert main(["flaky", "quarantine", test_id, "--project", "demo", "--reason", "x" * 501]) == 2
    assert "reason: must be at most 500 characters" in capsys.readouterr().err
    for argv in (["flaky", "list", test_id], ["flaky", "age", "--reason", "why"]):
        assert main(argv) == 2, argv
        assert "takes no test id or --reason" in capsys.readouterr().err
    assert main(["flaky", "--project", "demo", "--json"]) == 0
    assert [(t["test"], t["state"]) for t in json.loads(capsys.readouterr().out)["tests"]] == [(test_id, "cleared")]


def _serve(state: Settings, port: int = 0):  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", port, create_app(state, enqueue=lambda steps: None, broker_check=lambda: None), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join()
        server.server_close()

    return server.server_port, stop


def test_every_client_command_says_when_the_api_cannot_be_reached(state: Settings, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    edits = tmp_path / "edits.txt"
    edits.write_text("x")
    plan = str(ROOT / "examples" / "demo" / "plan.yaml")
    for argv in (["status", "x"], ["cancel", "x"], ["submit-edits", "x", "p", str(edits), "--retry-for", "0"], ["run", plan, "--retry-for", "0"]):
        assert main([*argv, "--api", api]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"autopack: cannot reach the API at {api}: ") and "Traceback" not in err, (argv, err)


def test_run_wait_outlasts_a_restart_of_the_web_process_and_honours_its_timeout(state: Settings, demo_repo: Path,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`autopack run --wait` is how a deploy script waits for a build; the web process being
    redeployed meanwhile ended the wait with an error while the run went on."""
    from autopack.engine.store import emit

    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    port, stop = _serve(state)
    api = f"http://127.0.0.1:{port}"
    plan = str(ROOT / "examples" / "demo" / "plan.yaml")
    capsys.readouterr()
    assert main(["run", plan, "--api", api, "--wait", "--timeout", "1"]) == 3
    out, err = capsys.readouterr()
    first = out.split()[1]
    assert f"run {first} is still QUEUED after 1s; it goes on: autopack status {first}" in err

    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(main(["run", plan, "--api", api, "--wait"])))
    waiter.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with session_scope(state.db_url) as s:
            run_id = s.scalar(select(Run.id).where(Run.id != first))
        if run_id is not None:
            break
        time.sleep(0.05)
    assert run_id is not None
    stop()  # the web process goes away; the run ends meanwhile; a new one comes up on the same port
    with session_scope(state.db_url) as s:
        s.execute(update(Run).where(Run.id == run_id).values(state="DONE_SUCCESS"))
        emit(s, run_id, "run.finished", state="DONE_SUCCESS")
    dispatch_pending(SimpleNamespace(db_url=state.db_url), run_id)  # what the events queue does
    time.sleep(2.5)
    _, stop = _serve(state, port)
    try:
        waiter.join(timeout=30)
    finally:
        stop()
    assert result == [0]
    out, err = capsys.readouterr()
    assert f"run {run_id} (demo): DONE_SUCCESS" in out and "run.finished" in out
    assert f"cannot reach the API at {api}: " in err and "trying again for up to 300s" in err and "the API answers again" in err


def test_run_wait_prints_the_events_a_finished_runs_end_handlers_write(state: Settings, demo_repo: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The handlers of run.finished (events queue) write the run's last events (flaky tests,
    retired rules) after it ended: `autopack run --wait` waits for them instead of returning first."""
    from autopack.engine.store import emit
    from autopack.events.dispatch import Handler

    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    port, stop = _serve(state)
    api = f"http://127.0.0.1:{port}"
    result: list[int] = []
    try:
        waiter = threading.Thread(target=lambda: result.append(main(["run", str(ROOT / "examples" / "demo" / "plan.yaml"),
                                                                     "--api", api, "--wait"])))
        waiter.start()
        deadline = time.monotonic() + 20
        run_id = None
        while run_id is None and time.monotonic() < deadline:
            with session_scope(state.db_url) as s:
                run_id = s.scalar(select(Run.id))
            time.sleep(0.05)
        assert run_id is not None
        with session_scope(state.db_url) as s:
            s.execute(update(Run).where(Run.id == run_id).values(state="DONE_SUCCESS"))
            emit(s, run_id, "run.finished", state="DONE_SUCCESS")
        time.sleep(1.0)  # the CLI has seen the run finished, its end not yet handled
        assert waiter.is_alive()

        def quarantine(session, _services, event):  # type: ignore[no-untyped-def]
            emit(session, event["run_id"], "flaky.quarantined", test="tests/test_x.py::test_a", reason="flaked in 2 runs")

        dispatch_pending(SimpleNamespace(db_url=state.db_url), run_id,
                         handlers=[Handler("late", frozenset({"run.finished"}), quarantine)])
        waiter.join(timeout=30)
    finally:
        stop()
    assert result == [0]
    out = capsys.readouterr().out
    assert out.index("run.finished") < out.index("flaky.quarantined") < out.index(f"run {run_id} (demo): DONE_SUCCESS")


def test_run_submits_once_through_a_gateway_that_lost_the_answer_and_an_api_not_up_yet(state: Settings, demo_repo: Path,
                                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A proxy whose upstream was slow answers 504 after the API made the run: submitted again, the
    run was made twice (paid twice). The CLI sends one Idempotency-Key for the submission and tries
    again through 502/503/504 and an API that is not up yet; the second POST gets the first run back."""
    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    inner = create_app(state, enqueue=lambda steps: None, broker_check=lambda: None)
    posts: list[str | None] = []

    def gateway(environ, start_response):  # type: ignore[no-untyped-def]
        if environ["REQUEST_METHOD"] == "POST":
            posts.append(environ.get("HTTP_IDEMPOTENCY_KEY"))
            if len(posts) == 1:  # the API does the work; its answer never reaches the client
                b"".join(inner(environ, lambda *a, **k: None))
                start_response("504 Gateway Timeout", [("Content-Type", "text/html")])
                return [b"<html>upstream timed out</html>"]
        return inner(environ, start_response)

    port = free_port()
    api = f"http://127.0.0.1:{port}"
    result: list[int] = []
    sender = threading.Thread(target=lambda: result.append(main(["run", str(ROOT / "examples" / "demo" / "plan.yaml"), "--api", api])))
    sender.start()
    time.sleep(1.0)  # the API is not up yet: the first attempts find nothing
    server = make_server("127.0.0.1", port, gateway, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sender.join(timeout=30)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert result == [0]
    assert len(posts) == 2 and posts[0] is not None and posts[0] == posts[1]
    with session_scope(state.db_url) as s:
        runs = s.scalars(select(Run)).all()
        assert len(runs) == 1 and runs[0].idempotency_key == posts[0]
    out, err = capsys.readouterr()
    assert f"run {runs[0].id} queued" in out
    assert "cannot reach the API" in err and "trying again for up to 300s" in err and "the API answers again" in err


def test_status_follow_reattaches_to_a_run_until_its_end(state: Settings, demo_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After `run` without --wait, or a wait that timed out, `status --follow` follows the run to
    its end with run --wait's exit codes; with --json it prints only the final run."""
    from autopack.engine.store import emit

    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    port, stop = _serve(state)
    api = f"http://127.0.0.1:{port}"
    capsys.readouterr()
    try:
        assert main(["run", str(ROOT / "examples" / "demo" / "plan.yaml"), "--api", api]) == 0
        run_id = capsys.readouterr().out.split()[1]
        assert main(["status", run_id, "--follow", "--timeout", "0.5", "--api", api]) == 3
        out, err = capsys.readouterr()
        assert "run.queued" in out and f"still QUEUED after 0.5s; it goes on: autopack status {run_id} --follow" in err

        def finish() -> None:
            time.sleep(0.5)
            with session_scope(state.db_url) as s:
                s.execute(update(Run).where(Run.id == run_id).values(state="DONE_FAILED_CI_FAILED"))
                emit(s, run_id, "run.finished", state="DONE_FAILED_CI_FAILED")
            dispatch_pending(SimpleNamespace(db_url=state.db_url), run_id)  # what the events queue does

        ender = threading.Thread(target=finish)
        ender.start()
        assert main(["status", run_id, "--follow", "--api", api]) == 1  # ended, not DONE_SUCCESS
        ender.join()
        out = capsys.readouterr().out
        assert out.index("run.queued") < out.index("run.finished") < out.index(f"run {run_id} (demo): DONE_FAILED_CI_FAILED")
        assert main(["status", run_id, "--follow", "--json", "--api", api]) == 1
        assert json.loads(capsys.readouterr().out)["state"] == "DONE_FAILED_CI_FAILED"
        assert main(["status", "nope", "--follow", "--api", api]) == 2
        assert "HTTP 404" in capsys.readouterr().err
    finally:
        stop()


def test_garbled_answers_and_bad_urls_are_errors_not_tracebacks(state: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A peer that is not an HTTP server (or cuts its answer) and an --api without a scheme."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def garble() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"this is not HTTP\r\n\r\n")
            conn.close()

    server = threading.Thread(target=garble, daemon=True)
    server.start()
    try:
        for argv in (["status", "x"], ["cancel", "x"]):
            assert main([*argv, "--api", f"http://127.0.0.1:{port}"]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"autopack: cannot reach the API at http://127.0.0.1:{port}: ") and "Traceback" not in err
    finally:
        server.join(timeout=10)
        listener.close()
    for bad in ("127.0.0.1:8000", "http://[::1", "http://127.0.0.1:80x"):
        assert main(["status", "x", "--api", bad]) == 2
        err = capsys.readouterr().err
        assert f"invalid API URL {bad!r}" in err and "Traceback" not in err, err


def test_a_wait_with_a_timeout_ends_on_time_while_the_api_is_away(state: Settings, demo_repo: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    port, stop = _serve(state)
    api = f"http://127.0.0.1:{port}"
    assert main(["run", str(ROOT / "examples" / "demo" / "plan.yaml"), "--api", api]) == 0
    stop()  # the API goes away for longer than the wait's timeout (and shorter than --retry-for)
    with session_scope(state.db_url) as s:
        run_id = s.scalar(select(Run.id))
    started = time.monotonic()
    assert main(["status", str(run_id), "--follow", "--timeout", "1.5", "--api", api]) == 3
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert f"run {run_id}: no answer from the API within the wait's 1.5s" in err and took < 10, (took, err)


def test_a_token_about_to_cross_a_network_in_clear_is_warned_about(state: Settings, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AUTOPACK_API_TOKEN", "s3cret-for-this-test")
    assert main(["status", "x", "--api", f"http://0.0.0.0:{port}"]) == 2  # not loopback by address (it is this machine)
    err = capsys.readouterr().err
    assert err.startswith(f"autopack: warning: the API token goes to http://0.0.0.0:{port} over plain http")
    assert "s3cret" not in err
    assert main(["status", "x", "--api", f"http://127.0.0.1:{port}"]) == 2
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("AUTOPACK_API_TOKEN")
    assert main(["status", "x", "--api", f"http://0.0.0.0:{port}"]) == 2  # no token, nothing to warn about
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["status", "x", "--follow", "--retry-for", "nan"], ["status", "x", "--follow", "--timeout", "-1"],
                                  ["run", "plan.yaml", "--wait", "--timeout", "soon"]])
def test_wait_times_must_be_seconds(state: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # refused by the parser, before any request
        main(argv)
    assert exc.value.code == 2 and "seconds" in capsys.readouterr().err


def test_rules_export_writes_the_file_or_says_why_not(state: Settings, demo_repo: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["project", "add", "demo", str(demo_repo)]) == 0
    out = tmp_path / "rules.json"
    assert main(["rules", "export", "--project", "demo", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rules"] == []
    capsys.readouterr()
    for bad in (tmp_path / "missing" / "rules.json", tmp_path):
        assert main(["rules", "export", "--project", "demo", "--out", str(bad)]) == 2
        assert f"cannot write {bad}" in capsys.readouterr().err


@pytest.mark.parametrize("content", [
    "project: demo\nzz: &a [*a]\n",  # a list that contains itself: json.dumps died on it
    "project: demo\nx: " + "1" * 5000 + "\n",  # more digits than int() converts
    "[" * 50000,  # deeper than the parser recurses
], ids=["recursive-alias", "huge-int", "deep"])
def test_run_with_an_unreadable_plan_exits_2_without_a_traceback(tmp_path: Path, content: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(content, encoding="utf-8")
    assert main(["run", str(plan), "--api", "http://127.0.0.1:9", "--retry-for", "0"]) == 2
    err = capsys.readouterr().err
    assert "autopack: plan: " in err and "Traceback" not in err
