"""AUTOPACK_API_TOKEN (web/auth.py): every request but /health carries the token, as a bearer token
or basic auth's password; the CLI sends it; without a token set the API is open as before."""

from __future__ import annotations

import base64
import logging
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr
from werkzeug.serving import make_server

from autopack.cli import main
from autopack.db.models import Project
from autopack.db.session import session_scope
from autopack.plan import load_plan_file
from autopack.settings import ROOT, Settings
from web import create_app
from web.auth import presented_token, token_matches

TOKEN = "s3cret-token-for-tests"
PLAN = load_plan_file(ROOT / "examples" / "demo" / "plan.yaml").model_dump(mode="json")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_what_a_header_presents() -> None:
    assert presented_token(f"Bearer {TOKEN}") == TOKEN and presented_token(f"bearer  {TOKEN} ") == TOKEN
    assert presented_token(_basic("anyone", TOKEN)) == TOKEN and presented_token(_basic("", "a:b")) == "a:b"
    for bad in (None, "", "Bearer", "Bearer ", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                "Token x", "Basic " + base64.b64encode(b"\xff:\xfe").decode(), "Basic éé"):
        assert presented_token(bad) is None, bad
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and not token_matches(f"Bearer {TOKEN}x", TOKEN)
    assert not token_matches(None, TOKEN) and not token_matches("Bearer ", TOKEN)


def test_with_a_token_only_requests_that_carry_it_are_answered(local_settings: Settings, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    settings = local_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with session_scope(settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    sent: list[object] = []
    client = create_app(settings, enqueue=sent.extend, broker_check=lambda: None).test_client()
    caplog.set_level(logging.DEBUG)
    for path in ("/runs", "/ui", "/openapi.json", "/runs/x/events", "/ui/static/run.js", "/"):
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": _basic("u", "wrong")}):
            resp = client.get(path, headers=auth)
            assert resp.status_code == 401, (path, auth)
            assert resp.headers["WWW-Authenticate"].startswith('Basic realm="autopack"')
    refused = client.post("/runs", json=PLAN)
    assert refused.status_code == 401 and refused.get_json()["error"] == "unauthorized" and sent == []
    assert client.get("/health").status_code == 200  # healthchecks carry no credentials
    made = client.post("/runs", json=PLAN, headers={"Authorization": f"Bearer {TOKEN}"})
    assert made.status_code == 202 and len(sent) == 1
    run_id = made.get_json()["id"]
    assert client.get(f"/runs/{run_id}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    page = client.get(f"/ui/runs/{run_id}", headers={"Authorization": _basic("me", TOKEN)})  # a browser's way
    assert page.status_code == 200 and run_id in page.get_data(as_text=True)
    assert TOKEN not in caplog.text


def test_the_cli_sends_the_token(local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = local_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with session_scope(settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    server = make_server("127.0.0.1", 0, create_app(settings, enqueue=lambda steps: None, broker_check=lambda: None), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(local_settings.state_path))
    plan = str(ROOT / "examples" / "demo" / "plan.yaml")
    try:
        monkeypatch.delenv("AUTOPACK_API_TOKEN", raising=False)
        assert main(["run", plan, "--api", api]) == 2
        assert "HTTP 401: this API needs its token" in capsys.readouterr().err
        monkeypatch.setenv("AUTOPACK_API_TOKEN", TOKEN)
        assert main(["run", plan, "--api", api]) == 0
        run_id = capsys.readouterr().out.split()[1]
        assert main(["status", run_id, "--api", api]) == 0 and main(["cancel", run_id, "--api", api]) == 0
        assert "CANCELLED" in capsys.readouterr().out
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_the_openapi_document_states_the_optional_token(local_settings: Settings) -> None:
    doc = create_app(local_settings, broker_check=lambda: None).test_client().get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"},
                                                    "basic": {"type": "http", "scheme": "basic"}}
    assert {} in doc["security"]  # optional: only with AUTOPACK_API_TOKEN set
    assert "401" in doc["paths"]["/runs"]["post"]["responses"] and doc["paths"]["/health"]["get"]["security"] == [{}]


def test_a_cross_site_form_cannot_write_with_a_browsers_cached_dashboard_credentials(local_settings: Settings, tmp_path: Path) -> None:
    """A browser logged in to the dashboard (basic auth) attaches those credentials to a cross-site
    form's POST too; such a form sends text/plain or form bodies, which can still spell valid JSON.
    Writes take the bearer token only, and bodies must say they are JSON."""
    import json

    settings = local_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with session_scope(settings.db_url) as s:
        s.add(Project(name="demo", repo_path=str(tmp_path), base_branch="main"))
    sent: list[object] = []
    client = create_app(settings, enqueue=sent.extend, broker_check=lambda: None).test_client()
    basic = {"Authorization": _basic("me", TOKEN)}
    forged = client.post("/runs", data=json.dumps(PLAN), content_type="text/plain", headers=basic)
    assert forged.status_code == 415 and sent == []  # a form is refused first, whoever sends it
    assert client.post("/runs", json=PLAN, headers=basic).status_code == 401  # basic auth never writes
    run_id = client.post("/runs", json=PLAN, headers={"Authorization": f"Bearer {TOKEN}"}).get_json()["id"]
    assert client.post(f"/runs/{run_id}/cancel", headers=basic).status_code == 401
    assert client.get(f"/runs/{run_id}", headers=basic).status_code == 200  # reads: the dashboard's way
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    as_text = client.post("/runs", data=json.dumps(PLAN), content_type="text/plain", headers=bearer)
    assert as_text.status_code == 415 and "Content-Type: application/json" in as_text.get_json()["message"]
    assert len(sent) == 1


def test_a_blank_token_is_unset_and_blanks_around_one_are_not_part_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_TOKEN", "   ")
    assert Settings().token is None
    monkeypatch.setenv("AUTOPACK_API_TOKEN", f"  {TOKEN}\n")
    assert Settings().token == TOKEN



def test_a_token_that_cannot_go_in_a_header_is_refused_when_the_settings_load(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOPACK_API_TOKEN", "s€cret")
    with pytest.raises(ValueError, match="visible ASCII"):
        Settings()
    assert main(["status", "r1"]) == 2  # the CLI says so, without a traceback
    assert "AUTOPACK_API_TOKEN: Value error, AUTOPACK_API_TOKEN must be visible ASCII" in capsys.readouterr().err


def test_a_non_ascii_basic_header_is_a_401_not_a_500(local_settings: Settings, tmp_path: Path) -> None:
    settings = local_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    client = create_app(settings, enqueue=lambda steps: None, broker_check=lambda: None).test_client()
    assert client.get("/runs", headers={"Authorization": "Basic éé"}).status_code == 401
