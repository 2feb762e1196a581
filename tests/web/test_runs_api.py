"""The Flask API: submit, list, show, cancel, events, errors (422 naming the field, 404, 409)."""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from autopack.config import load_config
from autopack.db.migrate import upgrade
from autopack.db.models import Attempt, Event, FlakyTest, Phase, Project, Run, StepRow
from autopack.db.session import session_scope
from autopack.events.dispatch import dispatch_pending
from autopack.plan import load_plan_file
from autopack.settings import ROOT, Settings
from web import create_app

PLAN = load_plan_file(ROOT / "examples" / "demo" / "plan.yaml").model_dump(mode="json")


def _client(settings: Settings, repo: Path) -> tuple[Any, list[Any]]:
    with session_scope(settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(repo), base_branch="main"))
    sent: list[Any] = []
    app = create_app(settings, enqueue=sent.extend, broker_check=lambda: None)
    return app.test_client(), sent


@pytest.fixture()
def api(local_settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    return _client(local_settings, tmp_path)


def test_submit_show_list(api) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    resp = client.post("/runs", json=PLAN)
    assert resp.status_code == 202
    body = resp.get_json()
    run_id = body["id"]
    assert body["state"] == "QUEUED" and body["branch"] == f"autopack/{run_id}"
    assert resp.headers["Location"] == f"/runs/{run_id}"
    # One committed step row for start_run, and its id is what was enqueued.
    assert len(sent) == 1 and sent[0][1] == "start_run"
    run = client.get(f"/runs/{run_id}").get_json()
    assert [(t["id"], t["state"]) for t in run["tiers"]] == [("core", "PENDING"), ("interface", "PENDING")]
    assert [(p["id"], p["state"], p["attempts"]) for t in run["tiers"] for p in t["phases"]] == [
        ("stats", "QUEUED", 0), ("parse", "QUEUED", 0), ("cli", "QUEUED", 0)]
    listed = client.get("/runs").get_json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
    assert client.get("/runs?state=QUEUED&project=demo").get_json()["runs"][0]["id"] == run_id
    assert client.get("/runs?state=RUNNING").get_json()["runs"] == []
    assert client.get("/runs?project=other").get_json()["runs"] == []
    bad = client.get("/runs?state=SLEEPING")
    assert bad.status_code == 422 and bad.get_json()["field"] == "state"


def test_dry_run_compiles_without_starting(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    resp = client.post("/runs?dry_run=true", json=PLAN)
    assert resp.status_code == 200
    strategy = resp.get_json()["strategy"]
    assert [p["phase_id"] for p in strategy["phases"]] == ["stats", "parse", "cli"]
    assert all({"max_attempts", "token_cap", "ci_profile", "audit"} <= set(p) for p in strategy["phases"])
    assert sent == []
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
        assert s.scalar(select(func.count()).select_from(StepRow)) == 0


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["tiers"][0]["phases"][0].pop("goal"), "tiers.0.phases.0.goal"),
        (lambda d: d.update(repo_path="/etc"), "repo_path"),
        (lambda d: d["tiers"][0]["phases"][0].update(scope=["../outside"]), "tiers.0.phases.0.scope"),
        (lambda d: d["tiers"][0]["phases"][0].update(scope=["/abs/path"]), "tiers.0.phases.0.scope"),
    ],
)
def test_bad_plans_are_422_naming_the_field(api, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    data = copy.deepcopy(PLAN)
    mutate(data)
    resp = client.post("/runs", json=data)
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["error"] == "invalid_plan" and body["field"] == field
    assert sent == []


def test_bad_bodies(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    resp = client.post("/runs", data="{not json", content_type="application/json")
    assert resp.status_code == 422 and resp.get_json()["field"] == "body"
    resp = client.post("/runs", data="", content_type="application/json")
    assert resp.status_code == 422 and resp.get_json()["field"] == "body"
    resp = client.post("/runs", json=[1, 2])
    assert resp.status_code == 422 and resp.get_json()["field"] == "plan"
    for mimetype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",  # what a form can send
                     "application/xml"):  # and any other type that is not JSON
        resp = client.post("/runs", data=json.dumps(PLAN), content_type=mimetype)
        assert resp.status_code == 415 and resp.get_json()["error"] == "unsupported_media_type", mimetype
    resp = client.post("/runs", json={**PLAN, "project": "nope"})
    assert resp.status_code == 404 and "nope" in resp.get_json()["message"]


def test_unknown_ids_are_404(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    for method, path in (("get", "/runs/unknown"), ("post", "/runs/unknown/cancel"), ("get", "/runs/unknown/events")):
        resp = getattr(client, method)(path)
        assert resp.status_code == 404 and resp.get_json()["error"] == "not_found"
    assert client.get("/nowhere").status_code == 404


def test_cancel_twice_is_409(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    first = client.post(f"/runs/{run_id}/cancel")
    assert first.status_code == 200 and first.get_json()["state"] == "CANCELLED"
    second = client.post(f"/runs/{run_id}/cancel")
    assert second.status_code == 409 and second.get_json()["error"] == "conflict"


def test_events_in_order_after_n(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    client.post(f"/runs/{run_id}/cancel")
    events = client.get(f"/runs/{run_id}/events").get_json()
    assert [e["seq"] for e in events["events"]] == [1, 2] and events["last_seq"] == 2
    assert [e["type"] for e in events["events"]] == ["run.queued", "run.cancelled"]
    for e in events["events"]:  # UTC, said so, on SQLite too (its timestamps come back naive)
        assert datetime.fromisoformat(e["at"]).utcoffset() == timedelta(0), e["at"]
    later = client.get(f"/runs/{run_id}/events?after=1").get_json()["events"]
    assert [e["seq"] for e in later] == [2]
    bad = client.get(f"/runs/{run_id}/events?after=abc")
    assert bad.status_code == 422 and bad.get_json()["field"] == "after"


def test_health(local_settings: Settings, tmp_path: Path) -> None:
    ok = create_app(local_settings, broker_check=lambda: None).test_client().get("/health")
    assert ok.status_code == 200 and ok.get_json() == {"ok": True, "database": "ok", "broker": "ok", "profile": "local"}

    def broken() -> None:
        raise ConnectionRefusedError("no broker")

    down = create_app(local_settings, broker_check=broken).test_client().get("/health")
    assert down.status_code == 503 and down.get_json()["broker"].startswith("error: ConnectionRefusedError")
    nodb = Settings(state_dir=tmp_path / "x", database_url="sqlite:////nonexistent/dir/x.db")
    resp = create_app(nodb, broker_check=lambda: None).test_client().get("/health")
    assert resp.status_code == 503 and resp.get_json()["database"].startswith("error")


def test_openapi_document(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    assert {"/runs", "/runs/{run_id}", "/runs/{run_id}/cancel", "/runs/{run_id}/events", "/health",
            "/runs/{run_id}/phases/{phase}/builder_result"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert schemas["Plan"]["additionalProperties"] is False

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


@pytest.mark.postgres
def test_submit_and_cancel_on_postgres(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    settings = Settings(state_dir=tmp_path / "state", profile="prod", database_url=pg_url)
    client, sent = _client(settings, tmp_path)
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    assert client.get(f"/runs/{run_id}").get_json()["state"] == "QUEUED"
    assert client.post(f"/runs/{run_id}/cancel").status_code == 200
    assert client.post(f"/runs/{run_id}/cancel").status_code == 409
    assert len(sent) == 1


def _dispatched(settings: Settings) -> None:
    """What the events queue does: run the handlers of the events written so far."""
    from types import SimpleNamespace

    from autopack.events.dispatch import dispatch_pending

    dispatch_pending(SimpleNamespace(db_url=settings.db_url))


def test_server_sent_events_follow_a_run_to_its_end(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    client.post(f"/runs/{run_id}/cancel")
    _dispatched(local_settings)
    body = client.get(f"/runs/{run_id}/events/stream?poll=0.05").get_data(as_text=True)
    blocks = [b for b in body.split("\n\n") if b.strip()]
    assert [b.splitlines()[0] for b in blocks] == ["id: 1", "id: 2", "event: end"]
    assert "event: run.cancelled" in blocks[1]
    resumed = client.get(f"/runs/{run_id}/events/stream?poll=0.05", headers={"Last-Event-ID": "1"}).get_data(as_text=True)
    assert resumed.startswith("id: 2\nevent: run.cancelled\n")
    # An EventSource reconnects to the URL it was opened with, ``after`` included, and adds the last
    # id it received: that id wins, or the events after ``after`` would come again on every reconnect.
    again = client.get(f"/runs/{run_id}/events/stream?after=0&poll=0.05", headers={"Last-Event-ID": "1"}).get_data(as_text=True)
    assert [line for line in again.splitlines() if line.startswith("id: ")] == ["id: 2"]
    assert client.get("/runs/nope/events/stream").status_code == 404
    for poll in ("abc", "0", "-1", "nan", "11"):  # a busy loop on the database, or a stream that breaks
        bad = client.get(f"/runs/{run_id}/events/stream?poll={poll}")
        assert bad.status_code == 422 and bad.get_json()["field"] == "poll", poll


def test_postmortem_endpoint(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from autopack.events.dispatch import dispatch_pending

    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    missing = client.get(f"/runs/{run_id}/postmortem")
    assert missing.status_code == 404 and "no postmortem yet" in missing.get_json()["message"]
    client.post(f"/runs/{run_id}/cancel")
    dispatch_pending(SimpleNamespace(db_url=local_settings.db_url))
    resp = client.get(f"/runs/{run_id}/postmortem")
    assert resp.status_code == 200 and resp.mimetype == "text/markdown"
    assert f"# Postmortem of run {run_id}" in resp.get_data(as_text=True)
    assert client.get(f"/runs/{run_id}/postmortem?format=json").get_json()["facts"]["state"] == "CANCELLED"
    assert client.get(f"/runs/{run_id}/postmortem?format=markdown").mimetype == "text/markdown"
    bad = client.get(f"/runs/{run_id}/postmortem?format=xml")
    assert bad.status_code == 422 and bad.get_json()["field"] == "format"


def test_flaky_tests_api_lists_a_projects_records_by_state(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from autopack.db.models import FlakyTest
    from autopack.engine.leases import now_utc

    client, _ = api
    now = now_utc()
    with session_scope(local_settings.db_url) as s:
        project = s.scalar(select(Project).where(Project.name == "demo"))
        for test_id, state in (("tests/t.py::b", "suspected"), ("tests/t.py::c", "cleared"), ("tests/t.py::a", "quarantined")):
            s.add(FlakyTest(project_id=project.id, test_id=test_id, state=state, state_reason="why", flaky_count=2, runs=["r1", "r2"],
                            passes_since_flaky=1, first_seen_at=now, last_flaky_at=now, state_changed_at=now))
    body = client.get("/projects/demo/flaky-tests").get_json()
    assert body["project"] == "demo"
    assert [(t["test"], t["state"]) for t in body["tests"]] == [
        ("tests/t.py::a", "quarantined"), ("tests/t.py::b", "suspected"), ("tests/t.py::c", "cleared")]
    first = body["tests"][0]
    assert (first["flaky_count"], first["runs"], first["passes_since_flaky"], first["reason"]) == (2, ["r1", "r2"], 1, "why")
    assert first["last_flaky_at"] == now.isoformat()
    only = client.get("/projects/demo/flaky-tests?state=quarantined").get_json()["tests"]
    assert [t["test"] for t in only] == ["tests/t.py::a"]
    bad = client.get("/projects/demo/flaky-tests?state=flaky")
    assert bad.status_code == 422 and bad.get_json()["field"] == "state"
    assert client.get("/projects/nope/flaky-tests").status_code == 404
    assert "/projects/{name}/flaky-tests" in client.get("/openapi.json").get_json()["paths"]


def test_flaky_tests_api_quarantines_and_clears_by_hand(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    url = "/projects/demo/flaky-tests/tests/t.py::test_x[a/b]"
    resp = client.put(url, json={"state": "quarantined", "reason": "flakes on the CI box"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["project"] == "demo"
    test = body["test"]
    assert (test["test"], test["state"], test["reason"], test["flaky_count"], test["runs"]) == (
        "tests/t.py::test_x[a/b]", "quarantined", "by hand: flakes on the CI box", 0, [])
    assert client.get("/projects/demo/flaky-tests?state=quarantined").get_json()["tests"] == [test]
    cleared = client.put(url, json={"state": "cleared"})
    assert cleared.status_code == 200 and (cleared.get_json()["test"]["state"], cleared.get_json()["test"]["reason"]) == ("cleared", "by hand")
    assert [t["state"] for t in client.get("/projects/demo/flaky-tests").get_json()["tests"]] == ["cleared"]


@pytest.mark.parametrize(("body", "field"), [
    ({"state": "suspected"}, "state"), ({"state": "flaky"}, "state"), ({}, "state"), ({"state": ["quarantined"]}, "state"),
    ({"state": "cleared", "reason": 3}, "reason"), ({"state": "cleared", "why": "x"}, "why"), (["quarantined"], "body"),
    ({"state": "quarantined", "reason": "x" * 501}, "reason"),
])
def test_flaky_tests_api_refuses_bad_bodies_naming_the_field(api, body: Any, field: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    resp = client.put("/projects/demo/flaky-tests/tests/t.py::test_x", json=body)
    assert resp.status_code == 422 and resp.get_json()["field"] == field, resp.get_json()
    assert client.get("/projects/demo/flaky-tests").get_json()["tests"] == []


def test_flaky_tests_api_by_hand_errors(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    empty = client.put("/projects/demo/flaky-tests/tests/t.py::test_x", data="", content_type="application/json")
    assert empty.status_code == 422 and "send a JSON object with `state` (quarantined or cleared)" in empty.get_json()["message"]
    bad_json = client.put("/projects/demo/flaky-tests/tests/t.py::test_x", data="{", content_type="application/json")
    assert bad_json.status_code == 422 and bad_json.get_json()["field"] == "body"
    unknown = client.put("/projects/nope/flaky-tests/tests/t.py::test_x", json={"state": "quarantined"})
    assert unknown.status_code == 404 and "'nope' is not registered" in unknown.get_json()["message"]
    none = client.put("/projects/demo/flaky-tests/tests/t.py::test_x", json={"state": "cleared"})
    assert none.status_code == 404
    assert none.get_json()["message"] == "test 'tests/t.py::test_x' has no known-flaky record to clear in project 'demo'"
    form = client.put("/projects/demo/flaky-tests/tests/t.py::test_x", data="state=quarantined", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    assert client.get("/projects/demo/flaky-tests").get_json()["tests"] == []
    doc = client.get("/openapi.json").get_json()["paths"]["/projects/{name}/flaky-tests/{test_id}"]["put"]
    assert {"200", "401", "404", "415", "422", "503"} <= set(doc["responses"])


def test_flaky_tests_by_hand_need_the_bearer_token(local_settings: Settings, tmp_path: Path) -> None:
    from pydantic import SecretStr

    settings = local_settings.model_copy(update={"api_token": SecretStr("a-token")})
    client, _ = _client(settings, tmp_path)
    url, body = "/projects/demo/flaky-tests/tests/t.py::test_x", {"state": "quarantined"}
    assert client.put(url, json=body).status_code == 401
    assert client.put(url, json=body, headers={"Authorization": "Basic " + base64.b64encode(b"u:a-token").decode()}).status_code == 401
    assert client.get("/projects/demo/flaky-tests", headers={"Authorization": "Bearer a-token"}).get_json()["tests"] == []
    assert client.put(url, json=body, headers={"Authorization": "Bearer a-token"}).status_code == 200


def test_rules_api_lists_edits_and_exports(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from autopack.db.models import Rule

    client, _ = api
    with session_scope(local_settings.db_url) as s:
        project = s.scalar(select(Project).where(Project.name == "demo"))
        s.add(Rule(project_id=project.id, key="test_failure:abc", text="Raise ValueError.", scope_pattern="calc/**",
                   category=None, provenance={"hints": [1, 2], "runs": ["r1"]}))
    rules = client.get("/projects/demo/rules").get_json()["rules"]
    assert [(r["scope"], r["status"], r["provenance"]["runs"]) for r in rules] == [("calc/**", "active", ["r1"])]
    assert set(rules[0]["effect"]) >= {"carried_phases", "other_phases"}
    rid = rules[0]["id"]
    resp = client.patch(f"/projects/demo/rules/{rid}", json={"status": "disabled", "text": "Always raise ValueError on bad input."})
    assert resp.status_code == 200 and resp.get_json()["status"] == "disabled"
    assert resp.get_json()["text"] == "Always raise ValueError on bad input."
    assert client.patch(f"/projects/demo/rules/{rid}", json={"status": "gone"}).get_json()["field"] == "status"
    assert client.patch(f"/projects/demo/rules/{rid}", json={"bogus": 1}).status_code == 422
    assert client.patch("/projects/demo/rules/999", json={"status": "active"}).status_code == 404
    assert client.get("/projects/nope/rules").status_code == 404
    exported = client.get("/projects/demo/rules/export")
    assert exported.headers["Content-Disposition"].endswith('filename="project_learned_rules.json"')
    assert exported.get_json()["rules"][0]["status"] == "disabled"
    # Made active again by a person: judged from now on (the record says when and what it was).
    again = client.patch(f"/projects/demo/rules/{rid}", json={"status": "active"}).get_json()
    assert (again["status"], again["status_reason"]) == ("active", None)
    assert again["provenance"]["reenabled_from"] == {"status": "disabled", "reason": "set by a person"}
    assert again["provenance"]["reenabled_at"] and again["provenance"]["runs"] == ["r1"]


def test_issue_endpoints(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    assert client.get(f"/runs/{run_id}/issues").get_json() == {"run_id": run_id, "issues": [], "open": {"major": 0, "minor": 0}}
    backlog = client.get("/projects/demo/backlog").get_json()
    assert backlog["open"] == 0 and backlog["by_severity"] == {"major": 0, "minor": 0}
    assert client.get("/runs/nope/issues").status_code == 404
    assert client.get("/projects/nope/backlog").status_code == 404


def test_a_run_shows_what_is_in_flight_and_what_was_charged_at_its_worst_case(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """GET /runs/<id>: ``tokens_reserved`` is the worst case of the calls in flight; ``charged`` the
    calls counted at their worst case because their worker never reported (the reconciler charged
    them), until a late report replaces the charge."""
    from datetime import timedelta

    from autopack.engine.leases import now_utc
    from autopack.engine.ledger import charge_orphans, reserve, settle
    from web.schemas import RunOut

    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    with session_scope(local_settings.db_url) as s:
        step = StepRow(run_id=run_id, name="build", arg="1", fence=1, lease_owner="w",
                       lease_expires_at=now_utc() + timedelta(seconds=60))
        s.add(step)
        s.flush()
        step_id = step.id
        r = reserve(s, run_id, None, 900, 0.09, None, step=(step_id, 1))
    view = client.get(f"/runs/{run_id}").get_json()
    RunOut.model_validate(view)
    assert (view["tokens"], view["tokens_reserved"], view["cost_reserved_usd"]) == (0, 900, 0.09)
    assert view["charged"] == {"calls": 0, "tokens": 0, "cost_usd": 0.0}
    with session_scope(local_settings.db_url) as s:  # the worker froze: its lease ran out
        s.get(StepRow, step_id).lease_expires_at = now_utc() - timedelta(seconds=1)  # type: ignore[union-attr]
    with session_scope(local_settings.db_url) as s:
        assert charge_orphans(s) == 1
    view = client.get(f"/runs/{run_id}").get_json()
    assert (view["tokens"], view["tokens_reserved"]) == (900, 0)
    assert view["charged"] == {"calls": 1, "tokens": 900, "cost_usd": 0.09}
    with session_scope(local_settings.db_url) as s:  # it resumes and reports
        settle(s, r, 300, 0.03)
    view = client.get(f"/runs/{run_id}").get_json()
    assert (view["tokens"], view["cost_usd"], view["charged"]["calls"]) == (300, 0.03, 0)


def test_a_run_submitted_while_the_broker_is_down_is_accepted_and_left_to_the_reconciler(local_settings: Settings, tmp_path: Path) -> None:
    """The run and its first step row commit before the message is sent. With the broker away the
    API answered 500 for a run that then started anyway (the reconciler sends unpicked steps), so a
    user who submitted again paid for two; now it answers 202 and the step row waits."""
    from celery import Celery

    from autopack.procs import free_port
    from tasks.runtime import enqueue

    nowhere = Celery("down", broker=f"redis://127.0.0.1:{free_port()}/0")
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    client = create_app(local_settings, enqueue=lambda steps: enqueue(nowhere, steps), broker_check=lambda: None).test_client()
    resp = client.post("/runs", json=PLAN)
    assert resp.status_code == 202, resp.get_json()
    run_id = resp.get_json()["id"]
    with session_scope(local_settings.db_url) as s:
        rows = s.scalars(select(StepRow).where(StepRow.run_id == run_id)).all()
        assert [(r.name, r.done_at, r.lease_owner) for r in rows] == [("start_run", None, None)]
    assert client.get(f"/runs/{run_id}").get_json()["state"] == "QUEUED"


def test_a_database_that_is_away_answers_503_with_retry_after(tmp_path: Path) -> None:
    """Not a 500 with an HTML page: a JSON error the client can act on (the CLI's --wait tries again)."""
    nodb = Settings(state_dir=tmp_path / "x", database_url="sqlite:////nonexistent/dir/x.db")
    client = create_app(nodb, broker_check=lambda: None).test_client()
    for resp in (client.get("/runs/abc"), client.get("/runs"), client.post("/runs", json=PLAN)):
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        assert resp.get_json() == {"error": "unavailable", "message": "the database is unavailable; try again shortly"}


def test_a_submission_retried_with_its_idempotency_key_gets_its_run_not_a_second_one(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    first = client.post("/runs", json=PLAN, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    run_id = first.get_json()["id"]
    client.post(f"/runs/{run_id}/cancel")
    again = client.post("/runs", json=PLAN, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == {"id": run_id, "state": "CANCELLED", "branch": f"autopack/{run_id}", "url": f"/runs/{run_id}"}
    assert len(sent) == 1  # the replay sends nothing
    reordered = dict(reversed(list(PLAN.items())))  # the same request, its keys in another order
    assert client.post("/runs", json=reordered, headers={"Idempotency-Key": "k-1"}).get_json()["id"] == run_id
    with session_scope(local_settings.db_url) as s:
        stored = s.get(Run, run_id)
        assert stored is not None and stored.idempotency_fingerprint is not None and len(stored.idempotency_fingerprint) == 64
    other = copy.deepcopy(PLAN)
    other["tiers"][0]["phases"][0]["goal"] = "something else"
    reused = client.post("/runs", json=other, headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 409 and f"was used for run {run_id} with a different plan" in reused.get_json()["message"]
    second = client.post("/runs", json=PLAN, headers={"Idempotency-Key": "k-2"})
    assert second.status_code == 202 and second.get_json()["id"] != run_id
    assert client.post("/runs", json=PLAN).get_json()["id"] not in (run_id, second.get_json()["id"])  # no key: a new run
    for bad in ("", "has space", "x" * 201, "é"):
        resp = client.post("/runs", json=PLAN, headers={"Idempotency-Key": bad})
        assert resp.status_code == 422 and resp.get_json()["field"] == "Idempotency-Key", bad
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 3


@pytest.mark.postgres
def test_concurrent_submissions_with_one_idempotency_key_make_one_run(pg_url: str, tmp_path: Path) -> None:
    """Both requests find no run with the key and insert; the unique key lets one commit, and the
    other answers with that run."""
    import threading

    upgrade(pg_url)
    settings = Settings(state_dir=tmp_path / "state", profile="prod", database_url=pg_url)
    _client(settings, tmp_path)
    app = create_app(settings, enqueue=lambda steps: None, broker_check=lambda: None)
    for attempt in range(5):
        key = f"race-{attempt}"
        barrier = threading.Barrier(4)
        answers: list[tuple[int, str, str | None]] = []

        def post() -> None:
            c = app.test_client()
            barrier.wait()
            resp = c.post("/runs", json=PLAN, headers={"Idempotency-Key": key})
            answers.append((resp.status_code, resp.get_json()["id"], resp.headers.get("Idempotent-Replayed")))

        threads = [threading.Thread(target=post) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert {code for code, _, _ in answers} == {202} and len({rid for _, rid, _ in answers}) == 1, answers
        assert sorted(str(r) for _, _, r in answers) == ["None", "true", "true", "true"], answers
        with session_scope(pg_url) as s:
            assert s.scalar(select(func.count()).select_from(Run).where(Run.idempotency_key == key)) == 1
            assert s.scalar(select(func.count()).select_from(StepRow).where(StepRow.run_id == answers[0][1])) == 1


def test_no_change_is_taken_from_a_form_even_a_bodyless_one(api) -> None:  # type: ignore[no-untyped-def]
    """What a cross-site page can send without asking is a form: a cancel needs no body, so the
    content type alone must refuse it. The CLI sends JSON; a bare `curl -X POST` sends no type."""
    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    for mimetype in ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain"):
        resp = client.post(f"/runs/{run_id}/cancel", content_type=mimetype)
        assert resp.status_code == 415, mimetype
    assert client.get(f"/runs/{run_id}").get_json()["state"] == "QUEUED"
    assert client.post(f"/runs/{run_id}/cancel").status_code == 200  # no body, no type


@pytest.mark.parametrize(("body", "words"), [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"project": ' + "1" * 5000 + "}", "invalid JSON"),
    ('{"project": "demo\\u0000"}', "NUL"),
    ('{"project": "\\ud800"}', "surrogate"),
    ('{"project": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
])
def test_bodies_python_cannot_read_or_the_database_cannot_store_are_422(api, body: Any, words: str) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    resp = client.post("/runs", data=body, content_type="application/json")
    assert resp.status_code == 422 and resp.get_json()["field"] == "body" and words in resp.get_json()["message"]
    assert sent == []


def test_a_body_over_the_size_limit_is_413_before_it_is_read(api) -> None:  # type: ignore[no-untyped-def]
    from web.app import MAX_BODY_BYTES

    client, sent = api
    resp = client.post("/runs", data=b" " * (MAX_BODY_BYTES + 1), content_type="application/json")
    assert resp.status_code == 413 and resp.get_json()["error"] == "request_entity_too_large"
    assert sent == []


@pytest.mark.parametrize("value, dry", [("", True), ("on", True), ("1", True), ("off", False), ("no", False)])
def test_dry_run_takes_the_usual_spellings(api, value: str, dry: bool) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    resp = client.post(f"/runs?dry_run={value}", json=PLAN)
    assert resp.status_code == (200 if dry else 202) and (sent == []) is dry


def test_a_mistyped_dry_run_starts_nothing(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    resp = client.post("/runs?dry_run=y3s", json=PLAN)
    assert resp.status_code == 422 and resp.get_json()["field"] == "dry_run"
    assert sent == []
    with session_scope(local_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0


def test_a_bad_last_event_id_is_422_and_a_good_one_resumes(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    client.post(f"/runs/{run_id}/cancel")
    _dispatched(local_settings)
    for bad in ("²", "3000000000", "-1", "x"):
        resp = client.get(f"/runs/{run_id}/events/stream", headers={"Last-Event-ID": bad})
        assert resp.status_code == 422 and resp.get_json()["field"] == "Last-Event-ID", bad
    stream = client.get(f"/runs/{run_id}/events/stream?poll=0.05", headers={"Last-Event-ID": "1"}).get_data(as_text=True)
    assert "id: 1\n" not in stream and "id: 2\n" in stream


def test_rule_edits_take_only_what_a_plan_scope_takes(api, local_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from autopack.db.models import Rule

    client, _ = api
    with session_scope(local_settings.db_url) as s:
        project = s.scalar(select(Project).where(Project.name == "demo"))
        rule = Rule(project_id=project.id, key="k", text="t", scope_pattern="calc/**", category=None, provenance={})
        s.add(rule)
        s.flush()
        rid = rule.id
    for scope in ("", "  ", ".git/hooks/*", "..\\x", "/etc/*", "a/../b"):
        resp = client.patch(f"/projects/demo/rules/{rid}", json={"scope": scope})
        assert resp.status_code == 422 and resp.get_json()["field"] == "scope", scope
    assert client.patch(f"/projects/demo/rules/{rid}", json={"scope": " calc/*.py "}).get_json()["scope"] == "calc/*.py"
    assert client.patch("/projects/demo/rules/99999999999999999999", json={"status": "active"}).status_code == 404


def _nul_requests(run_id: str) -> list[tuple[str, str, Any]]:
    return [
        ("GET", "/runs/a%00b", None), ("POST", "/runs/a%00b/cancel", None), ("GET", "/runs/a%00b/events", None),
        ("GET", "/runs?project=a%00b", None), ("GET", "/projects/a%00b/rules", None),
        ("GET", "/reports/costs?project=a%00b", None), ("GET", "/ui?project=a%00b", None),
        ("POST", "/runs", {**PLAN, "project": "a\x00b"}), ("POST", "/runs", {**PLAN, "base_branch": "m\x00"}),
        ("POST", f"/runs/{run_id}/phases/stats/builder_result", {"edits": "\x00"}),
    ]


def test_nul_characters_are_422_on_both_databases(api, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upgrade(pg_url)
    prod, _ = _client(Settings(state_dir=tmp_path / "state", profile="prod", database_url=pg_url), tmp_path)
    for client in (api[0], prod):
        run_id = client.post("/runs", json=PLAN).get_json()["id"]
        for method, url, body in _nul_requests(run_id):
            resp = client.open(url, method=method, json=body)
            assert resp.status_code == 422, (method, url, resp.status_code, resp.get_data(as_text=True)[:300])
        assert client.get(f"/runs/{run_id}").status_code == 200


def test_a_base_branch_the_repository_lacks_is_refused_at_submission(local_settings: Settings, demo_repo: Path) -> None:
    client, sent = _client(local_settings, demo_repo)
    for url in ("/runs", "/runs?dry_run=true"):
        resp = client.post(url, json={**PLAN, "base_branch": "mian"})
        assert resp.status_code == 422 and resp.get_json()["field"] == "base_branch", url
        assert "has no branch 'mian'" in resp.get_json()["message"]
    assert sent == []
    assert client.post("/runs", json={**PLAN, "base_branch": "main"}).status_code == 202


def _flaky_setup(settings: Settings, run_id: str) -> None:
    """A test of the project already flaked in another run; this run's gate saw it flake again: the
    flaky-test fold (a handler of run.finished/run.cancelled) quarantines it and says so with a
    ``flaky.quarantined`` event of this run."""
    now = datetime.now(timezone.utc)
    with session_scope(settings.db_url) as s:
        run = s.get(Run, run_id)
        ph = s.scalars(select(Phase).where(Phase.run_id == run_id).order_by(Phase.index)).first()
        s.add(Attempt(phase_id=ph.id, run_id=run_id, number=1, state="TESTED",
                      test_result={"outcomes": {"tests/test_x.py::test_a": "passed"}}, gate={"flaky": ["tests/test_x.py::test_a"]}))
        s.add(FlakyTest(project_id=run.project_id, test_id="tests/test_x.py::test_a", state="suspected", state_reason="",
                        flaky_count=1, runs=["another-run"], first_seen_at=now, last_flaky_at=now, state_changed_at=now))


def test_a_live_stream_does_not_end_before_the_runs_last_events(local_settings: Settings, tmp_path: Path) -> None:
    """A client following a run live gets every event of the run: the events the run.cancelled /
    run.finished handlers write into the run (flaky.*, rule.retired) come after the terminal state,
    and the stream must not have ended (``event: end``) without them."""
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    app = create_app(local_settings, enqueue=lambda steps: None, broker_check=lambda: None)
    client = app.test_client()
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    _flaky_setup(local_settings, run_id)
    body: dict[str, str] = {}

    def follow() -> None:
        body["text"] = app.test_client().get(f"/runs/{run_id}/events/stream?poll=0.05").get_data(as_text=True)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.3)  # the follower is live on the QUEUED run
    assert client.post(f"/runs/{run_id}/cancel").status_code == 200
    time.sleep(0.5)  # the events queue's dispatcher takes a moment to get to run.cancelled
    report = dispatch_pending(SimpleNamespace(db_url=local_settings.db_url))
    assert report.deliveries == 2  # flakiness and postmortem
    follower.join(timeout=10)
    assert not follower.is_alive()
    with session_scope(local_settings.db_url) as s:
        types = list(s.scalars(select(Event.type).where(Event.run_id == run_id).order_by(Event.seq)))
    assert types == ["run.queued", "run.cancelled", "flaky.quarantined"]
    # The follower got the run's last event, then the end of the stream.
    assert body["text"].index("event: flaky.quarantined") < body["text"].index("event: end"), body["text"]


def test_a_finished_runs_stream_ends_after_a_while_when_no_dispatcher_comes(local_settings: Settings, tmp_path: Path) -> None:
    """The events queue down: the stream of a cancelled run whose end no handler has taken yet ends
    after ``stream_end_wait_s`` instead of hanging."""
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    settings = local_settings.model_copy(update={"stream_end_wait_s": 0.5})
    client = create_app(settings, enqueue=lambda steps: None, broker_check=lambda: None).test_client()
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    client.post(f"/runs/{run_id}/cancel")
    started = time.monotonic()
    body = client.get(f"/runs/{run_id}/events/stream?poll=0.05").get_data(as_text=True)
    assert time.monotonic() - started >= 0.5
    assert [b.splitlines()[0] for b in body.split("\n\n") if b.strip()] == ["id: 1", "id: 2", "event: end"]


def test_event_streams_beyond_the_cap_are_503_and_leave_threads_for_requests(local_settings: Settings, tmp_path: Path) -> None:
    """Each stream holds a server thread for the life of its run: with gunicorn's threads less two
    as the cap, followers cannot take every thread (health checks included). One over the cap is a
    503 with Retry-After; a stream that ended frees its place."""
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    app = create_app(local_settings, enqueue=lambda steps: None, broker_check=lambda: None, max_streams=1)
    client = app.test_client()
    run_id = client.post("/runs", json=PLAN).get_json()["id"]
    first: dict[str, str] = {}
    stream = app.test_client().get(f"/runs/{run_id}/events/stream?poll=0.05")  # takes the one place
    assert stream.status_code == 200

    def follow() -> None:
        first["body"] = stream.get_data(as_text=True)
        stream.close()  # as a WSGI server does when a stream ends or its client goes away

    follower = threading.Thread(target=follow)
    follower.start()
    second = client.get(f"/runs/{run_id}/events/stream?poll=0.05")
    assert second.status_code == 503 and second.headers["Retry-After"] == "10" and second.get_json()["error"] == "busy"
    assert client.get("/health").status_code in (200, 503)  # requests are still served
    client.post(f"/runs/{run_id}/cancel")
    dispatch_pending(SimpleNamespace(db_url=local_settings.db_url))
    follower.join(timeout=10)
    assert not follower.is_alive() and "event: end" in first["body"]
    assert client.get(f"/runs/{run_id}/events/stream?poll=0.05").status_code == 200  # the place is free again


def test_a_key_given_twice_in_a_body_is_422(api) -> None:  # type: ignore[no-untyped-def]
    client, sent = api
    # The author listed the phase's scope twice: the second one silently replaced the first.
    body = json.dumps(PLAN).replace('"scope": ["calc/stats.py"]', '"scope": ["calc/stats.py"], "scope": ["calc"]', 1)
    resp = client.post("/runs?dry_run=true", data=body, content_type="application/json")
    assert resp.status_code == 422 and resp.get_json()["field"] == "body"
    assert "duplicate key 'scope'" in resp.get_json()["message"]
    assert sent == []


def test_a_strategy_error_at_submission_is_a_json_503_not_a_500(local_settings: Settings, tmp_path: Path) -> None:
    # load_config checks every category at start; a strategy changed since (here in place) fails at compile.
    config = load_config(ROOT / "config")
    config.strategy.categories["feature"] = {"max_attemps": 5}
    with session_scope(local_settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    client = create_app(local_settings, config=config, enqueue=lambda steps: None, broker_check=lambda: None).test_client()
    resp = client.post("/runs?dry_run=true", json=PLAN)
    assert resp.status_code == 503 and resp.get_json()["error"] == "config_error"
    assert "categories.feature.max_attemps: unknown field" in resp.get_json()["message"]


@pytest.mark.postgres
def test_a_base_branch_longer_than_its_column_is_422_on_postgres(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    settings = Settings(state_dir=tmp_path / "state", profile="prod", database_url=pg_url)
    client, sent = _client(settings, tmp_path / "elsewhere")  # the web process cannot read the repository
    resp = client.post("/runs", json={**PLAN, "base_branch": "feature/" + "b" * 250})  # valid for git; the column is 200
    assert resp.status_code == 422 and resp.get_json()["field"] == "base_branch", resp.get_json()
    assert sent == []
