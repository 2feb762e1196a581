"""The dashboard (web/dashboard.py): the runs list, a run's page with its tiers, phases, attempts and
events, what a model wrote shown as text only, and clear pages when the database is away or old."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from markupsafe import escape
from sqlalchemy import update
from werkzeug.serving import make_server

from autopack.db.migrate import downgrade, upgrade
from autopack.db.models import Attempt, Run
from autopack.db.session import session_scope
from autopack.engine.store import emit
from autopack.settings import ROOT, Settings
from tests.engine.harness import drive, make_services, register, stats_model, stats_plan, submit
from web import create_app

pytestmark = pytest.mark.sandbox


def _client(settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(settings, enqueue=lambda steps: None, broker_check=lambda: None).test_client()


def test_a_finished_run_shows_its_tiers_phases_attempts_and_events(local_settings: Settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    drive(services, ("start_run", run_id))
    client = _client(local_settings)

    listing = client.get("/ui")
    assert listing.status_code == 200 and listing.mimetype == "text/html"
    page = listing.get_data(as_text=True)
    assert f'<a href="/ui/runs/{run_id}">{run_id}</a>' in page and '<span class="state DONE_SUCCESS">DONE_SUCCESS</span>' in page
    assert run_id in client.get("/ui?project=demo&state=DONE_SUCCESS").get_data(as_text=True)
    for other in ("/ui?state=RUNNING", "/ui?project=elsewhere"):
        empty = client.get(other).get_data(as_text=True)
        assert run_id not in empty and "No runs match" in empty

    resp = client.get(f"/ui/runs/{run_id}")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    with session_scope(local_settings.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        attempt = run.phases[0].attempts[0]
        head, model, commit, number = run.head_commit, attempt.model, attempt.candidate_commit, attempt.number
        summary = (attempt.test_result or {})["summary"]
        events = run.event_seq
    assert head and model and commit
    assert f"<code>{head[:12]}</code>" in page and f"<code>{commit[:10]}</code>" in page
    assert "<td>stats<div" in page and f"<td>attempt {number}</td>" in page and f"<td>{model}" in page
    assert f"tests: {summary}" in page and "audit: approve" in page
    assert len(re.findall(r"<li value=\"\d+\">", page)) == events and '<span class="type">run.finished</span>' in page
    assert 'data-live="false"' in page and f'href="/runs/{run_id}/postmortem"' in page


def test_a_live_run_page_follows_its_events(local_settings: Settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    client = _client(local_settings)
    page = client.get(f"/ui/runs/{run_id}").get_data(as_text=True)
    assert 'data-live="true"' in page and 'data-after="1"' in page and "the page reloads when the run ends" in page
    script = re.search(r'<script src="([^"]+)"></script>', page)
    assert script is not None and script.group(1) == "/ui/static/run.js"
    js = client.get(script.group(1))
    assert js.status_code == 200 and js.mimetype in ("text/javascript", "application/javascript")
    body = js.get_data(as_text=True)
    js.close()  # a static file: the response holds it open
    # It asks the events API for what came after the last event shown, and reloads when the run ends.
    assert '"/events?after=" + after' in body and "run\\.(finished|cancelled)" in body and "location.reload" in body
    assert client.get(f"/runs/{run_id}/events?after=1").get_json()["events"] == []  # the URL it polls answers


def test_what_a_model_or_a_plan_wrote_is_shown_as_text(local_settings: Settings, demo_repo: Path) -> None:
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    hostile = '<script>alert("goal")</script>'
    run_id = submit(services, stats_plan("feature", goal=f"Add calc/stats.py {hostile}"))
    with session_scope(local_settings.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        s.add(Attempt(phase_id=run.phases[0].id, run_id=run_id, number=0, model='<img src=x onerror="alert(1)">',
                      failure_class="test_failure", failure='</td><script>alert("failure")</script>', state="FAILED"))
    resp = _client(local_settings).get(f"/ui/runs/{run_id}")
    page = resp.get_data(as_text=True)
    assert "<script>alert" not in page and "<img src=x" not in page
    with session_scope(local_settings.db_url) as s:
        emit(s, run_id, "phase.queued", phase_key="stats", note="<b>é</b>")
    page = _client(local_settings).get(f"/ui/runs/{run_id}").get_data(as_text=True)
    # Shown as the live script shows it (JSON.stringify, then as text): escaped for HTML only.
    assert '<span class="payload">{&#34;note&#34;:&#34;&lt;b&gt;é&lt;/b&gt;&#34;}</span>' in page
    assert str(escape(hostile)) in page and str(escape('<img src=x onerror="alert(1)">')) in page
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_unknown_runs_the_root_and_a_database_that_is_away_or_old(local_settings: Settings, tmp_path: Path) -> None:
    client = _client(local_settings)
    assert client.get("/").status_code == 302 and client.get("/").headers["Location"] == "/ui"
    missing = client.get("/ui/runs/nope")
    assert missing.status_code == 404 and "run &#39;nope&#39; not found" in missing.get_data(as_text=True)
    assert client.get("/runs/nope").get_json()["error"] == "not_found"  # the API keeps answering JSON
    assert "No runs." in client.get("/ui").get_data(as_text=True)
    for path in ("/ui?state=BOGUS", "/runs?state=BOGUS"):  # one run list behind both: the same check
        assert client.get(path).status_code == 422, path

    away = _client(Settings(state_dir=tmp_path / "x", database_url="sqlite:////nonexistent/dir/x.db"))
    resp = away.get("/ui")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5" and "The database is unavailable" in resp.get_data(as_text=True)

    downgrade(local_settings.db_url, "0002")  # an older schema than this code: `autopack migrate` was not run
    resp = client.get("/ui")
    assert resp.status_code == 500 and "run autopack migrate" in resp.get_data(as_text=True)
    api = client.get("/runs")
    assert api.status_code == 500 and api.get_json()["error"] == "schema_out_of_date"
    upgrade(local_settings.db_url)
    assert client.get("/ui").status_code == 200
    with session_scope(local_settings.db_url) as s:  # and the database is usable again
        s.execute(update(Run).values(state="QUEUED"))


def test_the_live_page_script_appends_new_events_and_reloads_when_the_run_ends(local_settings: Settings, demo_repo: Path) -> None:
    """web/static/run.js itself, run by Node against the API on a real server: what a browser would do."""
    node = shutil.which("node")
    assert node is not None, "Node.js runs the dashboard's script in this test (Debian package nodejs)"
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))  # event 1: run.queued, shown by the page
    server = make_server("127.0.0.1", 0, create_app(local_settings, enqueue=lambda steps: None, broker_check=lambda: None), threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    page = subprocess.Popen([node, str(Path(__file__).with_name("dashboard_page.js")), str(ROOT / "web" / "static" / "run.js"),
                             f"http://127.0.0.1:{server.server_port}", run_id, "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        with session_scope(local_settings.db_url) as s:
            emit(s, run_id, "phase.queued", phase_key="stats", note="<b>as text</b>")
        time.sleep(2.5)  # at least one poll in between
        with session_scope(local_settings.db_url) as s:
            s.execute(update(Run).where(Run.id == run_id).values(state="CANCELLED"))
            emit(s, run_id, "run.cancelled")
        out, err = page.communicate(timeout=30)
    finally:
        if page.poll() is None:
            page.kill()
            page.communicate()
        server.shutdown()
        serving.join()
        server.server_close()
    assert page.returncode == 0, err
    shown = json.loads(out)
    assert shown["types"] == ["phase.queued", "run.cancelled"] and shown["values"] == [2, 3]
    assert shown["text"][0] == 'phase.queued [stats] {"note":"<b>as text</b>"}'  # textContent: never parsed as HTML


def test_a_page_showing_the_runs_end_is_not_live_even_if_the_run_was_read_before_it(local_settings: Settings, demo_repo: Path) -> None:
    """The run is read, then its events: a run that ended in between shows run.finished under a
    state still running. Marked live, the page would poll for an end it has already passed."""
    services, _ = make_services(local_settings, stats_model)
    register(local_settings, demo_repo)
    run_id = submit(services, stats_plan("feature"))
    with session_scope(local_settings.db_url) as s:  # what that page reads: RUNNING, and the end
        s.execute(update(Run).where(Run.id == run_id).values(state="RUNNING"))
        emit(s, run_id, "run.finished", state="DONE_SUCCESS")
    page = _client(local_settings).get(f"/ui/runs/{run_id}").get_data(as_text=True)
    assert '<span class="type">run.finished</span>' in page and 'data-live="false"' in page
