"""An external Builder: a phase with `builder: external` waits for edits posted over HTTP; they go
through the same governance, test gate and audit as a model's, and a failure is fed back on the
next attempt."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from autopack.cli import main
from autopack.db.session import session_scope
from autopack.engine.runner import execute
from autopack.engine.runs import list_events
from autopack.plan import parse_plan
from tests.engine.harness import demo_model, drive, make_services, phase, register, submit, view
from web import create_app
from web.schemas import RunOut

pytestmark = pytest.mark.sandbox

G = demo_model().__globals__


def _plan() -> Any:
    return parse_plan({"project": "demo", "tiers": [{"id": "t", "phases": [
        {"id": "stats", "goal": "Add calc/stats.py with mean and median; both raise ValueError on empty input.",
         "category": "feature", "complexity": "low", "scope": ["calc/stats.py"], "deliverables": ["calc/stats.py"],
         "acceptance_tests": ["tests/test_stats.py"], "builder": "external"},
        {"id": "parse", "goal": "Add calc/parse.py.", "category": "parsing", "complexity": "low", "scope": ["calc/parse.py"],
         "deliverables": ["calc/parse.py"], "acceptance_tests": ["tests/test_parse.py"]}]}]})


def _run_steps(services, steps: list[tuple[int, str]]) -> None:  # type: ignore[no-untyped-def]
    queue = list(steps)
    while queue:
        step_id, _ = queue.pop(0)
        queue += execute(services, step_id, owner="test-driver")


def test_external_builder_over_http(local_settings, demo_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    services, client = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    v = view(services, run_id)
    stats = phase(v, "stats")
    assert v["state"] == "RUNNING" and stats["state"] == "EXECUTING" and stats["builder"] == "external"
    assert stats["attempt_details"][0]["state"] == "AWAITING_BUILDER" and stats["attempt_details"][0]["model"] == "external"
    assert not [c for c in client.calls if c.system.startswith("You are the Builder")]  # no model was asked

    sent: list[tuple[int, str]] = []
    http = create_app(local_settings, config=services.config, enqueue=sent.extend, broker_check=lambda: None).test_client()
    url = f"/runs/{run_id}/phases/stats/builder_result"

    # Bad requests change nothing.
    assert http.post(url, json={"edits": "just some words"}).get_json()["field"] == "edits"
    assert http.post(url, json={"edits": G["STATS"], "extra": 1}).status_code == 422
    assert http.post(url, json=["not", "an", "object"]).status_code == 422
    assert http.post(f"/runs/{run_id}/phases/nope/builder_result", json={"edits": G["STATS"]}).status_code == 404
    assert http.post(f"/runs/{run_id}/phases/parse/builder_result", json={"edits": G["PARSE_FIXED"]}).status_code == 409
    assert sent == []

    # A wrong submission fails the gate like a model's would, and the next attempt waits again.
    resp = http.post(url, json={"edits": G["STATS_WRONG"], "by": "alice"})
    assert resp.status_code == 202 and resp.get_json() == {"run_id": run_id, "phase": "stats", "attempt": 1, "state": "SUBMITTED"}
    again = http.post(url, json={"edits": G["STATS"]})
    assert again.status_code == 409 and "not waiting" in again.get_json()["message"]
    assert [name for _, name in sent] == ["build"]
    _run_steps(services, sent)
    stats = phase(view(services, run_id), "stats")
    first, second = stats["attempt_details"]
    assert first["state"] == "REJECTED" and first["decision"] == "retry" and first["classification"] == "test_failure"
    assert first["submission"]["by"] == "alice" and first["commit"] is not None
    assert second["state"] == "AWAITING_BUILDER" and stats["feedback"].startswith("test gate:")

    # Out of scope: refused by governance, like a model's edit.
    sent.clear()
    outside = "=== FILE: calc/core.py ===\n```python\nX = 1\n```\n"
    assert http.post(url, json={"edits": outside}).status_code == 202
    _run_steps(services, sent)
    stats = phase(view(services, run_id), "stats")
    assert stats["attempt_details"][1]["failure_class"] == "edit_refused" and stats["attempt_details"][1]["decision"] == "retry"
    assert "calc/core.py" in stats["attempt_details"][1]["failure"]

    # The right edits, sent with the CLI, pass the gate and the audit; the run goes on to the
    # model-built phase.
    sent.clear()
    edits = tmp_path / "stats.edits"
    edits.write_text(G["STATS"])
    server = make_server("127.0.0.1", 0, create_app(local_settings, config=services.config, enqueue=sent.extend,
                                                    broker_check=lambda: None), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = f"http://127.0.0.1:{server.server_port}"
    try:
        assert main(["submit-edits", run_id, "stats", str(tmp_path / "missing"), "--api", api]) == 2
        assert "cannot read" in capsys.readouterr().err
        assert main(["submit-edits", run_id, "nope", str(edits), "--api", api]) == 2
        assert "HTTP 404" in capsys.readouterr().err
        assert main(["status", run_id, "--api", api]) == 0
        shown = capsys.readouterr().out
        assert f"attempts 3/3 waiting for its external Builder: autopack submit-edits {run_id} stats FILE" in shown
        assert "last failure: scope_violation -> retry_with_fix (rules): first scope_violation of the phase" in shown
        assert main(["submit-edits", run_id, "stats", str(edits), "--by", "alice", "--api", api]) == 0
        assert capsys.readouterr().out.strip() == f"run {run_id} phase stats: attempt 3 SUBMITTED"
    finally:
        server.shutdown()
        thread.join()
    _run_steps(services, sent)
    v = view(services, run_id)
    assert v["state"] == "DONE_SUCCESS", v["failure_reason"]
    stats = phase(v, "stats")
    assert stats["state"] == "COMPLETE" and stats["attempts"] == 3 and stats["attempt_details"][2]["decision"] == "complete"
    assert stats["attempt_details"][2]["audit"]["verdict"] == "approve"
    assert phase(v, "parse")["state"] == "COMPLETE"
    RunOut.model_validate(v)  # what GET /runs/<id> returns matches its published schema
    assert http.post(url, json={"edits": G["STATS"]}).status_code == 409
    with session_scope(local_settings.db_url) as s:
        kinds = [e["type"] for e in list_events(s, run_id)]
    assert kinds.count("phase.awaiting_builder") == 3 and kinds.count("attempt.submitted") == 3


def test_a_resent_submission_finds_its_attempt_instead_of_feeding_the_next(local_settings, demo_repo: Path) -> None:  # type: ignore[no-untyped-def]
    """The external Builder posts its edits and the answer is lost (a proxy timeout, a redeploy);
    meanwhile the worker built them, the gate failed them and attempt 2 waits. The same request sent
    again (same Idempotency-Key) is answered with attempt 1, replayed, and applies nothing: before,
    it became attempt 2's edits, the same failing edits applied twice and another attempt used up."""
    services, _ = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    run_id = submit(services, _plan())
    drive(services, ("start_run", run_id))
    sent: list[tuple[int, str]] = []
    http = create_app(local_settings, config=services.config, enqueue=sent.extend, broker_check=lambda: None).test_client()
    url = f"/runs/{run_id}/phases/stats/builder_result"
    body = {"edits": G["STATS_WRONG"], "by": "alice"}
    key = {"Idempotency-Key": "3f1c-submission-1"}

    first = http.post(url, json=body, headers=key)
    assert first.status_code == 202 and first.get_json()["attempt"] == 1 and "Idempotent-Replayed" not in first.headers
    again = http.post(url, json=body, headers=key)  # sent again before the worker got to it
    assert again.status_code == 202 and again.get_json()["attempt"] == 1 and again.headers["Idempotent-Replayed"] == "true"
    assert len(sent) == 1  # one build step
    _run_steps(services, sent)
    stats = phase(view(services, run_id), "stats")
    assert [a["state"] for a in stats["attempt_details"]] == ["REJECTED", "AWAITING_BUILDER"]

    sent.clear()
    late = http.post(url, json=body, headers=key)  # sent again after attempt 1 was judged
    assert late.status_code == 202 and late.get_json() == {"run_id": run_id, "phase": "stats", "attempt": 1, "state": "REJECTED"}
    assert late.headers["Idempotent-Replayed"] == "true" and sent == []
    stats = phase(view(services, run_id), "stats")
    assert [a["state"] for a in stats["attempt_details"]] == ["REJECTED", "AWAITING_BUILDER"]
    other = http.post(url, json={"edits": G["STATS"]}, headers=key)  # the same key for other edits
    assert other.status_code == 422 and other.get_json()["field"] == "Idempotency-Key"
    fresh = http.post(url, json={"edits": G["STATS"]}, headers={"Idempotency-Key": "3f1c-submission-2"})
    assert fresh.status_code == 202 and fresh.get_json()["attempt"] == 2


def test_an_empty_body_is_told_about_the_edits_not_a_plan(local_settings) -> None:  # type: ignore[no-untyped-def]
    client = create_app(local_settings, enqueue=lambda steps: None, broker_check=lambda: None).test_client()
    for data in ("", "{not json"):
        resp = client.post("/runs/r1/phases/p/builder_result", data=data, content_type="application/json")
        body = resp.get_json()
        assert resp.status_code == 422 and body["error"] == "invalid_request" and "plan" not in body["message"], body
    assert "the edits" in client.post("/runs/r1/phases/p/builder_result", data="", content_type="application/json").get_json()["message"]
