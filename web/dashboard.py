"""The dashboard: read-only HTML pages over the same engine views as the JSON API.

``/ui`` lists the runs (filters ``project``, ``state``); ``/ui/runs/<id>`` shows a run's tiers,
phases and attempts (model, routing, test summary, audit, decision, commit, tokens and cost) and its
events, which a small script keeps following while the run is live (it polls the events API and
reloads the page when the run ends). Everything a model wrote is shown as text: templates are
autoescaped and a Content-Security-Policy allows only this site's own script and stylesheet.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from autopack.db.models import Project
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.errors import NotFound
from autopack.states import RunState, is_terminal_run
from web.db_errors import database_answer


ENDING_EVENTS = frozenset({"run.finished", "run.cancelled"})  # what the page script reloads on
EVENTS_SHOWN = 300  # the newest events on a run's page; the events API has them all
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def dashboard_blueprint(db_url: str) -> Blueprint:
    bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")

    @bp.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @bp.errorhandler(NotFound)
    def _not_found(exc: NotFound):  # type: ignore[no-untyped-def]
        return render_template("message.html", title="Not found", message=str(exc)), 404

    @bp.errorhandler(DBAPIError)
    def _database(exc: DBAPIError):  # type: ignore[no-untyped-def]
        answer = database_answer(exc)
        title = {"unavailable": "Unavailable", "schema_out_of_date": "Database out of date"}.get(answer.code, "Internal error")
        message = answer.message[0].upper() + answer.message[1:] + "."
        return render_template("message.html", title=title, message=message), answer.status, answer.headers

    @bp.get("/")
    def _root():  # type: ignore[no-untyped-def]
        return redirect("/ui", code=302)

    @bp.get("/ui")
    def runs_page():  # type: ignore[no-untyped-def]
        project = request.args.get("project") or None
        state = request.args.get("state") or None
        with session_scope(db_url, read_only=True) as s:
            runs = runsvc.list_runs(s, limit=100, state=state, project=project)
            projects = list(s.scalars(select(Project.name).order_by(Project.name)))
        return render_template("runs.html", runs=runs, projects=projects, states=list(RunState.__members__),
                               project=project, state=state)

    @bp.get("/ui/runs/<run_id>")
    def run_page(run_id: str):  # type: ignore[no-untyped-def]
        with session_scope(db_url, read_only=True) as s:
            run = runsvc.get_run(s, run_id)
            view = runsvc.run_view(s, run)
            first = max(0, run.event_seq - EVENTS_SHOWN)
            events = runsvc.list_events(s, run_id, after=first, limit=EVENTS_SHOWN)
        # The events are read after the run: a run that ended in between shows its ending event, and
        # a page that says live while showing it would poll for an end it has already passed.
        ended = is_terminal_run(view["state"]) or any(e["type"] in ENDING_EVENTS for e in events)
        return render_template("run.html", run=view, events=events, first_shown=first + 1,
                               live=not ended, last_seq=events[-1]["seq"] if events else first, brief=brief, compact=compact)

    return bp


def brief(value: Any, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, for a table cell (the full text is in the API)."""
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact(value: Any) -> str:
    """JSON as the page script writes it (``JSON.stringify``): no spaces, characters as they are
    (the template escapes them for HTML)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
