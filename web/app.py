"""Flask app factory: a thin shell that translates HTTP to the engine and back."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from autopack.config import AppConfig, load_config
from autopack.db.models import Postmortem
from autopack.db.session import session_scope
from autopack.engine import runs as runsvc
from autopack.engine.external import submit_builder_result
from autopack.engine.leases import add_steps
from autopack.engine.store import StaleState
from autopack.events.dispatch import HANDLERS
from autopack.errors import ConfigError, Conflict, InvalidRequest, NotFound, PlanError
from autopack.plan import check_rel_glob, parse_plan, unique_keys
from autopack.settings import Settings, get_settings
from autopack.states import RunState, is_terminal_run
from web.auth import OPEN_PATHS, token_matches
from web.db_errors import database_answer
from web.dashboard import dashboard_blueprint
from web.openapi import build_openapi

log = logging.getLogger("autopack.web")
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
# A request body larger than this is refused (413) before it is read: a plan is a few KiB, and an
# external Builder's edits are capped at 1 MB (engine/external.py) once JSON-escaped.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_ROW_ID = 2**31 - 1  # the integer ids' column range: a larger id names no row


def text_problem(body: Any) -> str | None:
    """What makes the strings of a parsed JSON body unstorable, or None: a NUL (PostgreSQL's text
    cannot hold it) or a lone UTF-16 surrogate (``"\\ud800"``, which has no UTF-8 form)."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "strings must not contain NUL characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "strings must not contain lone UTF-16 surrogates (\\ud800-\\udfff)"
    return None

Enqueue = Callable[[list[tuple[int, str]]], None]  # committed (step id, step name) pairs
BrokerCheck = Callable[[], None]


def _default_enqueue(steps: list[tuple[int, str]]) -> None:
    from tasks.app import app as celery
    from tasks.runtime import enqueue

    enqueue(celery, steps)


def _default_broker_check() -> None:
    from tasks.app import app as celery

    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _error(status: int, kind: str, message: str, field: str | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"error": kind, "message": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status


def end_event_types() -> frozenset[str]:
    """The event types whose handlers may still write a run's events after it ended."""
    return frozenset(t for h in HANDLERS for t in h.types)


def create_app(
    settings: Settings | None = None,
    *,
    config: AppConfig | None = None,
    enqueue: Enqueue | None = None,
    broker_check: BrokerCheck | None = None,
    max_streams: int | None = None,
) -> Flask:
    """The API. ``max_streams`` caps the event streams this process serves at once (each holds a
    server thread for the life of its run): gunicorn gives it its threads less two, so that followers
    cannot take every thread and stop the API (health checks included); beyond it a stream is
    answered 503 with Retry-After. ``None``: no cap (werkzeug's server makes a thread per request)."""
    settings = settings or get_settings()
    config = config or load_config(settings.config_dir)
    enqueue = enqueue or _default_enqueue
    broker_check = broker_check or _default_broker_check
    db = settings.db_url
    streams = threading.BoundedSemaphore(max_streams) if max_streams is not None else None
    app = Flask("autopack", static_folder=None)  # the dashboard serves its own files under /ui/static
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.register_blueprint(dashboard_blueprint(db))

    @app.before_request
    def _json_writes_only():  # type: ignore[no-untyped-def]
        # A change comes as JSON. A cross-site page can send a form (these three types) to this
        # origin without asking, and nothing else: none is taken, bodyless ones included (a cancel).
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")
        if request.mimetype in FORM_TYPES or (has_body and request.mimetype != "application/json"):
            return _error(415, "unsupported_media_type", "send the body as JSON, with Content-Type: application/json")
        return None

    token = settings.token
    if token is not None:

        @app.before_request
        def _require_token():  # type: ignore[no-untyped-def]
            # Basic auth is the dashboard's way in, and a browser attaches it to any request to this
            # origin, a cross-site form's too: it opens reads (GET, HEAD) only. Writes need the bearer
            # token, which a page can only send after a CORS preflight this API never grants.
            basic = request.method in ("GET", "HEAD")
            if request.path in OPEN_PATHS or token_matches(request.headers.get("Authorization"), token, allow_basic=basic):
                return None
            resp, status = _error(401, "unauthorized", "this API needs its token: Authorization: Bearer <AUTOPACK_API_TOKEN>")
            resp.headers["WWW-Authenticate"] = 'Basic realm="autopack", charset="UTF-8"'  # a browser asks for it
            return resp, status

    @app.before_request
    def _no_nul():  # type: ignore[no-untyped-def]
        # PostgreSQL's text cannot hold NUL: a lookup by such a name or id would fail in the driver.
        if "\x00" in request.path:
            return _error(422, "invalid_request", "must not contain NUL characters", "path")
        for key, value in request.args.items(multi=True):
            if "\x00" in key or "\x00" in value:
                return _error(422, "invalid_request", "must not contain NUL characters", key.replace("\x00", ""))
        return None

    @app.errorhandler(NotFound)
    def _404(exc: NotFound):  # type: ignore[no-untyped-def]
        return _error(404, "not_found", str(exc))

    @app.errorhandler(Conflict)
    def _409(exc: Conflict):  # type: ignore[no-untyped-def]
        return _error(409, "conflict", str(exc))

    @app.errorhandler(StaleState)
    def _409_stale(exc: StaleState):  # type: ignore[no-untyped-def]
        # A row a request meant to change was changed by a worker at that moment: asking again works.
        return _error(409, "conflict", f"{exc}; try again")

    @app.errorhandler(InvalidRequest)
    def _422_request(exc: InvalidRequest):  # type: ignore[no-untyped-def]
        return _error(422, "invalid_request", exc.message, exc.field)

    @app.errorhandler(PlanError)
    def _422(exc: PlanError):  # type: ignore[no-untyped-def]
        return _error(422, "invalid_plan", exc.message, exc.field)

    @app.errorhandler(ConfigError)
    def _config(exc: ConfigError):  # type: ignore[no-untyped-def]
        # The operator's config/ is wrong (load_config checks it at start; a strategy changed since
        # can still fail here): no request can succeed until it is fixed, and the answer says why.
        log.error("configuration error for %s %s: %s", request.method, request.path, exc)
        return _error(503, "config_error", f"the server's configuration is wrong: {exc}")

    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeout)  # every connection of this process's pool busy: the database is away for now
    def _database(exc: DBAPIError | PoolTimeout):  # type: ignore[no-untyped-def]
        answer = database_answer(exc)
        resp, status = _error(answer.status, answer.code, answer.message)
        resp.headers.update(answer.headers)
        return resp, status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        return _error(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    def _ring(steps: list[tuple[int, str]]) -> None:
        """Send the messages of committed step rows. If the broker is away the request still
        succeeds: the rows are the truth, and the reconciler sends what no worker picked up."""
        try:
            enqueue(steps)
        except Exception as exc:  # noqa: BLE001 - any broker failure: the reconciler enqueues them
            log.warning("could not enqueue steps %s (%s: %s); the reconciler will", [sid for sid, _ in steps],
                        type(exc).__name__, exc)

    def _json_body(what: str = "the plan") -> Any:
        # A plan's faults are ``invalid_plan``; any other body's are ``invalid_request``.
        bad = PlanError if what == "the plan" else InvalidRequest
        try:
            raw = request.get_data(cache=False).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad("body", f"is not UTF-8 (byte {exc.start})") from None
        if not raw.strip():
            raise bad("body", f"empty body: send {what} as JSON")
        try:
            body = json.loads(raw, object_pairs_hook=unique_keys)  # a key given twice is refused
        except json.JSONDecodeError as exc:
            raise bad("body", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise bad("body", "invalid JSON: nested too deeply") from None
        except ValueError as exc:  # a duplicate key, or a number of more digits than Python converts
            raise bad("body", f"invalid JSON: {exc}") from None
        problem = text_problem(body)
        if problem is not None:
            raise bad("body", problem)
        return body

    def _num_arg(name: str, default: float, low: float, high: float, kind: type = int) -> Any:
        """A query parameter of type ``kind`` (int or float) from ``low`` to ``high``, else a 422 naming it."""
        raw = request.args.get(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise PlanError(name, "must be an integer" if kind is int else "must be a number") from None
        if not low <= value <= high:  # also refuses nan
            raise PlanError(name, f"must be between {low} and {high}")
        return value

    def _flag_arg(name: str) -> bool:
        """A yes/no query parameter (``?dry_run`` alone is yes), else a 422 naming it: a mistyped
        ``dry_run`` must not start a real, paid run."""
        raw = request.args.get(name)
        if raw is None:
            return False
        value = raw.strip().lower()
        if value in ("", "1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise PlanError(name, "must be true or false")

    def _idempotency_key() -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not 1 <= len(key) <= 200 or not all("!" <= c <= "~" for c in key):
            raise PlanError("Idempotency-Key", "must be 1 to 200 visible ASCII characters (a UUID, say)")
        return key

    def _accepted(run_id: str, state: str, branch: str, replayed: bool = False):  # type: ignore[no-untyped-def]
        body = {"id": run_id, "state": state, "branch": branch, "url": f"/runs/{run_id}"}
        headers = {"Location": f"/runs/{run_id}"} | ({"Idempotent-Replayed": "true"} if replayed else {})
        return jsonify(body), 202, headers

    @app.post("/runs")
    def create_run():  # type: ignore[no-untyped-def]
        body = _json_body()
        plan = parse_plan(body)
        dry = _flag_arg("dry_run")
        key = _idempotency_key()
        fingerprint = runsvc.request_fingerprint(body) if key is not None else None
        try:
            with session_scope(db) as s:
                project = runsvc.get_project(s, plan.project)
                if dry:
                    runsvc.check_base_branch(project, plan)
                    strategy = runsvc.compile_for(plan, config)
                    return jsonify({"dry_run": True, "strategy": strategy.model_dump(mode="json")}), 200
                earlier = runsvc.run_for_key(s, project, key, fingerprint) if key is not None else None
                if earlier is not None:  # a retried submission: its run, not a second one
                    return _accepted(earlier.id, earlier.state, earlier.branch, replayed=True)
                run = runsvc.create_run(s, plan, config, idempotency_key=key, idempotency_fingerprint=fingerprint)
                run_id, branch = run.id, run.branch
                start = add_steps(s, run_id, [("start_run", run_id)])[0]
                first = [(start.id, start.name)]
        except IntegrityError:
            if key is None:
                raise
            with session_scope(db) as s:  # the same submission, concurrently: the other one made the run
                earlier = runsvc.run_for_key(s, runsvc.get_project(s, plan.project), key, runsvc.request_fingerprint(body))
                if earlier is None:
                    raise
                log.info("submission with Idempotency-Key %r raced another; answering with its run %s", key, earlier.id)
                return _accepted(earlier.id, earlier.state, earlier.branch, replayed=True)
        _ring(first)
        return _accepted(run_id, RunState.QUEUED.value, branch)

    @app.get("/runs")
    def list_runs():  # type: ignore[no-untyped-def]
        limit = _num_arg("limit", 50, 1, 1000)
        with session_scope(db, read_only=True) as s:
            runs = runsvc.list_runs(s, limit=limit, state=request.args.get("state") or None,
                                    project=request.args.get("project") or None)
            return jsonify({"runs": runs})

    @app.get("/runs/<run_id>")
    def get_run(run_id: str):  # type: ignore[no-untyped-def]
        with session_scope(db, read_only=True) as s:
            view = runsvc.run_view(s, runsvc.get_run(s, run_id))
            # A finished run's end handlers (events queue) may still add its last events.
            view["events_pending"] = is_terminal_run(view["state"]) and runsvc.has_undispatched(s, run_id, end_event_types())
            return jsonify(view)

    @app.post("/runs/<run_id>/cancel")
    def cancel(run_id: str):  # type: ignore[no-untyped-def]
        with session_scope(db) as s:
            run = runsvc.cancel_run(s, run_id)
            return jsonify(runsvc.run_view(s, run))

    @app.post("/runs/<run_id>/phases/<phase>/builder_result")
    def builder_result(run_id: str, phase: str):  # type: ignore[no-untyped-def]
        key = _idempotency_key()
        body = _json_body('the edits as {"edits": "...", "by": "..."}')
        if not isinstance(body, dict):
            raise InvalidRequest("body", "must be a JSON object with `edits`")
        unknown = sorted(set(body) - {"edits", "by"})
        if unknown:
            raise InvalidRequest(unknown[0], "unknown field")
        with session_scope(db) as s:
            got = submit_builder_result(s, run_id, phase, body.get("edits"), body.get("by"), idempotency_key=key)
            out = {"run_id": run_id, "phase": phase, "attempt": got.attempt.number, "state": got.attempt.state}
        _ring(got.steps)
        return jsonify(out), 202, ({"Idempotent-Replayed": "true"} if got.replayed else {})

    @app.get("/runs/<run_id>/events")
    def events(run_id: str):  # type: ignore[no-untyped-def]
        after = _num_arg("after", 0, 0, 10**9)
        with session_scope(db, read_only=True) as s:
            evs = runsvc.list_events(s, run_id, after=after)
        return jsonify({"run_id": run_id, "events": evs, "last_seq": evs[-1]["seq"] if evs else after})

    @app.get("/runs/<run_id>/events/stream")
    def event_stream(run_id: str):  # type: ignore[no-untyped-def]
        """Server-sent events: the run's events from ``after`` (or Last-Event-ID) on, following a
        live run until it ends."""
        header = (request.headers.get("Last-Event-ID") or "").strip()
        after = _num_arg("after", 0, 0, 10**9)
        if header:  # what this stream sent as an event's id: a sequence number
            if not (header.isascii() and header.isdigit() and int(header) <= 10**9):
                raise PlanError("Last-Event-ID", "must be an event's sequence number (0 to 1000000000)")
            # A reconnecting EventSource asks the URL it was opened with (``after`` included) and
            # adds the last id it received: that id is where this connection resumes.
            after = int(header)
        poll = _num_arg("poll", 0.5, 0.05, 10.0, float)  # seconds between looks at a live run
        with session_scope(db, read_only=True) as s:
            runsvc.get_run(s, run_id)

        # The handlers of a run's end (run.finished, run.cancelled) write its last events (flaky
        # tests, retired rules): the stream ends once they have run, or after stream_end_wait_s.
        end_types = end_event_types()
        if streams is not None and not streams.acquire(blocking=False):
            resp, status = _error(503, "busy", f"this API process already serves {max_streams} event streams: try again "
                                               f"later, or poll GET /runs/{run_id}/events?after=N")
            resp.headers["Retry-After"] = "10"
            return resp, status

        def generate():  # type: ignore[no-untyped-def]
            last = after
            idle = 0.0
            ended_at: float | None = None
            while True:
                with session_scope(db, read_only=True) as s:
                    evs = runsvc.list_events(s, run_id, after=last)
                    state = runsvc.get_run(s, run_id).state
                    settling = is_terminal_run(state) and not evs and runsvc.has_undispatched(s, run_id, end_types)
                for ev in evs:
                    last = ev["seq"]
                    yield f"id: {ev['seq']}\nevent: {ev['type']}\ndata: {json.dumps(ev)}\n\n"
                if not evs and is_terminal_run(state):
                    ended_at = time.monotonic() if ended_at is None else ended_at
                    if not settling or time.monotonic() - ended_at >= settings.stream_end_wait_s:
                        yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
                        return
                if not evs:
                    idle += poll
                    if idle >= 15:  # keep proxies from closing an idle stream
                        idle = 0.0
                        yield ": keep-alive\n\n"
                    time.sleep(poll)

        resp = Response(generate(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if streams is not None:  # the server closes the response when the stream ends or its client goes away
            resp.call_on_close(streams.release)
        return resp

    @app.get("/runs/<run_id>/postmortem")
    def get_postmortem(run_id: str):  # type: ignore[no-untyped-def]
        if request.args.get("format", "markdown") not in ("markdown", "json"):
            raise PlanError("format", "must be markdown or json")
        with session_scope(db, read_only=True) as s:
            run = runsvc.get_run(s, run_id)
            pm = s.get(Postmortem, run_id)
            if pm is None:
                raise NotFound(f"run {run_id} has no postmortem yet ({run.state}); it is written when the run ends")
            if request.args.get("format") == "json":
                return jsonify({"run_id": run_id, "facts": pm.facts, "markdown": pm.markdown})
            return Response(pm.markdown, mimetype="text/markdown")

    @app.get("/runs/<run_id>/issues")
    def get_run_issues(run_id: str):  # type: ignore[no-untyped-def]
        from autopack.engine.issues import run_issues

        with session_scope(db, read_only=True) as s:
            return jsonify(run_issues(s, runsvc.get_run(s, run_id)))

    @app.get("/projects/<name>/backlog")
    def get_backlog(name: str):  # type: ignore[no-untyped-def]
        from autopack.engine.issues import backlog

        with session_scope(db, read_only=True) as s:
            return jsonify(backlog(s, runsvc.get_project(s, name)))

    @app.get("/runs/<run_id>/costs")
    def run_costs(run_id: str):  # type: ignore[no-untyped-def]
        from autopack.engine.costs import run_costs as costs_of

        with session_scope(db, read_only=True) as s:
            return jsonify(costs_of(s, runsvc.get_run(s, run_id)))

    @app.get("/reports/costs")
    def cost_report():  # type: ignore[no-untyped-def]
        from datetime import datetime

        from autopack.engine.costs import report

        since = None
        if raw := request.args.get("since"):
            try:
                since = datetime.fromisoformat(raw)
            except ValueError:
                raise PlanError("since", "must be an ISO date or date-time, e.g. 2026-11-28") from None
        with session_scope(db, read_only=True) as s:
            project = runsvc.get_project(s, request.args["project"]) if request.args.get("project") else None
            return jsonify(report(s, project, since))

    @app.get("/reports/budgets")
    def budget_report():  # type: ignore[no-untyped-def]
        from autopack.engine.calibration import budget_report as report
        from autopack.governance.calibrate import DAYS, MIN_COMPLETED

        days, min_completed = _num_arg("days", *DAYS), _num_arg("min_completed", *MIN_COMPLETED)
        with session_scope(db, read_only=True) as s:
            project = runsvc.get_project(s, request.args["project"]) if request.args.get("project") else None
            return jsonify(report(s, project, days, min_completed=min_completed))

    @app.get("/projects/<name>/rules")
    def project_rules(name: str):  # type: ignore[no-untyped-def]
        from autopack.engine.learning import project_rules as rules_of

        with session_scope(db, read_only=True) as s:
            return jsonify({"project": name, "rules": rules_of(s, runsvc.get_project(s, name))})

    @app.get("/projects/<name>/flaky-tests")
    def project_flaky(name: str):  # type: ignore[no-untyped-def]
        from autopack.engine.flakiness import project_flaky_tests
        from autopack.flakiness import STATES

        state = request.args.get("state")
        if state is not None and state not in STATES:
            raise PlanError("state", f"must be one of {', '.join(STATES)}")
        with session_scope(db, read_only=True) as s:
            return jsonify({"project": name, "tests": project_flaky_tests(s, runsvc.get_project(s, name), state)})

    @app.put("/projects/<name>/flaky-tests/<path:test_id>")
    def set_flaky(name: str, test_id: str):  # type: ignore[no-untyped-def]
        """An operator quarantines or clears a test by hand; the normal rules still apply afterwards."""
        from autopack.engine.flakiness import set_record_by_hand
        from autopack.flakiness import HAND_STATES

        usage = f"a JSON object with `state` ({' or '.join(HAND_STATES)}) and, optionally, `reason`"
        body = _json_body(usage)
        if not isinstance(body, dict):
            raise InvalidRequest("body", f"must be {usage}")
        unknown = sorted(set(body) - {"state", "reason"})
        if unknown:
            raise InvalidRequest(unknown[0], "unknown field")
        if body.get("state") not in HAND_STATES:
            raise InvalidRequest("state", f"must be one of {', '.join(HAND_STATES)}")
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise InvalidRequest("reason", "must be a string")
        with session_scope(db) as s:
            return jsonify({"project": name, "test": set_record_by_hand(s, runsvc.get_project(s, name), test_id, body["state"], reason)})

    @app.get("/projects/<name>/rules/export")
    def export_rules(name: str):  # type: ignore[no-untyped-def]
        from autopack.engine.learning import export_json

        with session_scope(db, read_only=True) as s:
            body = export_json(s, runsvc.get_project(s, name))
        return Response(body, mimetype="application/json",
                        headers={"Content-Disposition": 'attachment; filename="project_learned_rules.json"'})

    @app.patch("/projects/<name>/rules/<int:rule_id>")
    def edit_rule(name: str, rule_id: int):  # type: ignore[no-untyped-def]
        from autopack.db.models import Rule
        from autopack.engine.learning import reenable, rule_view

        body = _json_body()
        if not isinstance(body, dict) or not set(body) <= {"status", "text", "scope"} or not body:
            raise PlanError("body", "send one or more of: status (active|disabled), text, scope")
        with session_scope(db) as s:
            project = runsvc.get_project(s, name)
            rule = s.get(Rule, rule_id) if rule_id <= MAX_ROW_ID else None
            if rule is None or rule.project_id != project.id:
                raise NotFound(f"rule {rule_id} not found in project {name!r}")
            if "status" in body:
                if body["status"] not in ("active", "disabled"):
                    raise PlanError("status", "must be 'active' or 'disabled'")
                if body["status"] == "active":
                    reenable(rule)  # judged from now on: the evidence that retired it does not retire it again
                else:
                    rule.status, rule.status_reason = "disabled", "set by a person"
            if "text" in body:
                if not isinstance(body["text"], str) or not body["text"].strip():
                    raise PlanError("text", "must be a non-empty string")
                rule.text = body["text"].strip()
            if "scope" in body:
                if not isinstance(body["scope"], str):
                    raise PlanError("scope", "must be a relative path glob")
                try:
                    rule.scope_pattern = check_rel_glob(body["scope"])
                except ValueError as exc:
                    raise PlanError("scope", f"must be a relative path glob: {exc}") from None
            s.flush()
            return jsonify(rule_view(s, rule))

    @app.get("/health")
    def health():  # type: ignore[no-untyped-def]
        db_state = broker_state = "ok"
        try:
            with session_scope(db, read_only=True) as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            db_state = f"error: {type(exc).__name__}"
        try:
            broker_check()
        except Exception as exc:  # noqa: BLE001
            broker_state = f"error: {type(exc).__name__}"
        ok = db_state == "ok" and broker_state == "ok"
        body = {"ok": ok, "database": db_state, "broker": broker_state, "profile": settings.profile}
        return jsonify(body), 200 if ok else 503

    spec = build_openapi()

    @app.get("/openapi.json")
    def openapi():  # type: ignore[no-untyped-def]
        return jsonify(spec)

    return app
