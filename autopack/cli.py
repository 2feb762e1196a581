"""The ``autopack`` command line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autopack.settings import Settings, get_settings

TERMINAL_PREFIXES = ("DONE_", "CANCELLED")


def _out(msg: str) -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(f"autopack: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- server side


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from autopack.db.migrate import upgrade

    if settings.profile == "local":
        settings.state_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    _out(f"database migrated ({settings.profile} profile)")
    return 0


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    from web import create_app

    server = args.server or ("gunicorn" if settings.profile == "prod" else "werkzeug")
    if server == "gunicorn":
        from web.serve import serve_gunicorn

        # Event streams may hold all but two of a process's threads (requests and health checks keep those).
        serve_gunicorn(lambda: create_app(settings, max_streams=max(1, args.threads - 2)), args.host, args.port,
                       workers=args.workers, threads=args.threads)
        return 0
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, create_app(settings), threaded=True, use_reloader=False)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.app import app

    argv = ["worker", "-Q", args.queues, "--loglevel", args.loglevel, "-E"]
    if args.concurrency:
        argv += ["-c", str(args.concurrency)]
    if args.pool:
        argv += ["-P", args.pool]
    app.worker_main(argv)
    return 0


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.app import app

    settings.state_path.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", args.loglevel, "-s", str(settings.state_path / "celerybeat-schedule")])
    return 0


def _check_sandbox(settings: Settings) -> bool:
    if settings.sandbox == "none":
        _err("warning: AUTOPACK_SANDBOX=none — tests run WITHOUT isolation")
        return True
    from autopack.errors import SandboxUnavailable
    from autopack.sandbox.runner import check_bwrap

    try:
        sandbox = check_bwrap(cgroup=settings.sandbox_cgroup)
    except SandboxUnavailable as exc:
        _err(str(exc))
        _err("or run without a sandbox (no isolation): AUTOPACK_SANDBOX=none")
        return False
    if sandbox.cgroups is not None:
        _err(f"sandbox: each run's memory and processes are capped by a {sandbox.cgroups.describe()}")
    else:
        _err("sandbox: no cgroup per run (AUTOPACK_SANDBOX_CGROUP); only the per-process limits apply")
    return True


def _start_cluster(settings: Settings, port: int, env: dict[str, str], quiet: bool) -> Any:
    from autopack.procs import WORKER_GROUPS, ProcessGroup, wait_http, worker_argv

    group = ProcessGroup(log_dir=settings.state_path / "logs", env=env)
    me = [sys.executable, "-m", "autopack.cli"]
    group.start("web", [*me, "web", "--port", str(port)], quiet=quiet)
    for name, queues, pool, conc in WORKER_GROUPS:
        group.start(f"worker-{name}", worker_argv(name, queues, pool, conc), quiet=quiet)
    group.start("beat", [*me, "beat"], quiet=quiet)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60, group)
    except (TimeoutError, RuntimeError) as exc:
        group.stop()
        raise SystemExit(f"autopack: the cluster did not start: {exc} (logs in {group.log_dir})") from None
    except BaseException:
        group.stop()
        raise
    return group


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    if not _check_sandbox(settings):
        return 2
    cmd_migrate(args, settings)
    from autopack.procs import stop_on_signals

    stop_on_signals()
    group = _start_cluster(settings, args.port, dict(os.environ), quiet=False)
    _out(f"autopack is up on http://127.0.0.1:{args.port} (Ctrl-C stops web, workers and beat)")
    try:
        while not group.failed():
            time.sleep(0.5)
        _err("; ".join(group.failed()))
        return 1
    except KeyboardInterrupt:
        _out("stopping …")
        return 0
    finally:
        group.stop()


# ---------------------------------------------------------------------------------------------- projects


def cmd_project_add(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from autopack.db.models import Project
    from autopack.db.session import session_scope
    from autopack.errors import GitError
    from autopack.plan import ID_RULE, is_identifier
    from autopack.workspace.git import Git

    if not is_identifier(args.name):
        _err(f"project name {args.name!r} {ID_RULE} (it goes into URLs and plans)")
        return 2
    path = Path(args.path).resolve()
    if not (path / ".git").exists():
        bare = path.is_dir() and (path / "HEAD").is_file() and (path / "objects").is_dir()
        _err(f"{path} is a bare repository: give a clone with a work tree" if bare else f"{path} is not a git repository")
        return 2
    try:
        base = args.base_branch or Git(path).current_branch()
    except GitError as exc:
        _err(str(exc))
        return 2
    if not base:
        _err("cannot tell the base branch (detached HEAD): pass --base-branch")
        return 2
    if Git(path).rev_parse(f"refs/heads/{base}") is None:
        _err(f"branch {base!r} does not exist in {path}")
        return 2
    with session_scope(settings.db_url) as s:
        project = s.scalar(select(Project).where(Project.name == args.name))
        if project is None:
            s.add(Project(name=args.name, repo_path=str(path), base_branch=base))
            _out(f"project {args.name} registered: {path} (base branch {base})")
        else:
            project.repo_path, project.base_branch = str(path), base
            _out(f"project {args.name} updated: {path} (base branch {base})")
    return 0


def cmd_project_list(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from autopack.db.models import Project
    from autopack.db.session import session_scope

    with session_scope(settings.db_url) as s:
        for p in s.scalars(select(Project).order_by(Project.name)):
            _out(f"{p.name}\t{p.repo_path}\t{p.base_branch}")
    return 0


# ---------------------------------------------------------------------------------------------- client side


def _render_event(ev: dict[str, Any]) -> str:
    p = ev.get("payload", {})
    where = f" [{ev['phase']}]" if ev.get("phase") else ""
    detail = {
        "attempt.started": lambda: f"attempt {p.get('number')} with {p.get('model')}",
        "attempt.built": lambda: f"candidate {str(p.get('commit'))[:10]} ({', '.join(p.get('files', []))})",
        "attempt.build_failed": lambda: f"{p.get('failure_class')}: {str(p.get('failure', '')).splitlines()[0][:120] if p.get('failure') else ''}",
        "attempt.tested": lambda: f"{'passed' if p.get('passed') else 'FAILED'}: {p.get('summary')} — {p.get('reason', '')}"[:200],
        "attempt.audited": lambda: f"{p.get('verdict')}: {p.get('summary', '')}"[:200],
        "phase.complete": lambda: f"complete at {str(p.get('commit'))[:10]}",
        "phase.retry": lambda: f"retry: {str(p.get('reason', '')).splitlines()[0][:160]}",
        "phase.failed": lambda: f"failed: {str(p.get('reason', '')).splitlines()[0][:160]}",
        "run.baseline": lambda: f"baseline: {p.get('summary')}",
        "run.finished": lambda: f"{p.get('state')} {p.get('reason') or ''}".strip(),
        "tier.started": lambda: f"tier {p.get('tier')}",
        "tier.complete": lambda: f"tier {p.get('tier')} complete",
    }.get(ev["type"], lambda: "")()
    return f"  {ev['seq']:>3} {ev['type']:<22}{where} {detail}".rstrip()


class WaitTimeout(Exception):
    """``autopack run --wait --timeout S``: the run was not over within S seconds (it goes on)."""


RETRYABLE_STATUS = frozenset({502, 503, 504})  # a proxy before a restarting web process; the database away


def through_outages(fn: Callable[..., Any], *args: Any, outage_s: float, retry_s: float = 2.0) -> Any:
    """``fn(*args)``, tried again every ``retry_s`` while the API cannot be reached or answers
    502/503/504 (a web process being redeployed, a proxy before it, the database away), until it has
    failed for ``outage_s`` in a row; said once on standard error."""
    from autopack.client import ApiError, ApiUnreachable

    down_since: float | None = None
    while True:
        try:
            got = fn(*args)
        except (ApiUnreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status not in RETRYABLE_STATUS:
                raise
            now = time.monotonic()
            if down_since is None:
                down_since = now
                _err(f"{exc}; trying again for up to {outage_s:.0f}s")
            if now - down_since >= outage_s:
                raise
            time.sleep(min(retry_s, outage_s - (now - down_since)))
            continue
        if down_since is not None:
            _err("the API answers again")
        return got


# How long ``follow`` waits for a finished run's last events (those its end's handlers write).
END_EVENTS_WAIT_S = 30.0


def follow(client: Any, run_id: str, *, show: bool = True, timeout: float | None = None, outage_s: float = 300.0,
           retry_s: float = 2.0) -> dict[str, Any]:
    """Print the run's events as they come and return the final run view.

    The run goes on without the API, so a web process being redeployed does not end the wait: each
    request goes :func:`through_outages` of up to ``outage_s``. ``timeout`` (``None``: none) raises
    :class:`WaitTimeout`."""

    from autopack.client import ClientError

    deadline = None if timeout is None else time.monotonic() + timeout

    def ask(fn: Any, *args: Any) -> Any:
        # An outage is retried for outage_s, and never past the wait's own deadline.
        window = outage_s if deadline is None else max(0.0, min(outage_s, deadline - time.monotonic()))
        try:
            return through_outages(fn, *args, outage_s=window, retry_s=retry_s)
        except ClientError:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id}: no answer from the API within the wait's {timeout:g}s") from None
            raise

    after = 0
    settle_until: float | None = None
    while True:
        for ev in ask(client.events, run_id, after)["events"]:
            if show:
                _out(_render_event(ev))
            after = ev["seq"]
        run = ask(client.run, run_id)
        if run["state"].startswith(TERMINAL_PREFIXES) and not ask(client.events, run_id, after)["events"]:
            # The run's end handlers (events queue) may still add its last events (flaky tests,
            # retired rules): wait for them a while, not for ever (the events queue may be down).
            settle_until = settle_until or time.monotonic() + END_EVENTS_WAIT_S
            if not run.get("events_pending") or time.monotonic() >= settle_until:
                return dict(run)
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"run {run_id} is still {run['state']} after {timeout:g}s")
        time.sleep(0.2)


def _print_run(run: dict[str, Any]) -> None:
    _out(f"run {run['id']} ({run['project']}): {run['state']}" + (f" — {run['failure_reason']}" if run.get("failure_reason") else ""))
    _out(f"  branch {run['branch']} from {run['base_branch']} · tokens {run['tokens']} · ${run['cost_usd']:.4f}")
    charged = run.get("charged") or {}
    if charged.get("calls"):
        _out(f"  of which {charged['calls']} call(s) counted at their worst case ({charged['tokens']} tokens, "
             f"${charged['cost_usd']:.4f}): their worker died before reporting the usage")
    for tier in run["tiers"]:
        _out(f"  tier {tier['id']}: {tier['state']}")
        for ph in tier["phases"]:
            commit = (ph.get("commit") or "")[:10]
            details = ph.get("attempt_details") or []
            waiting = bool(details) and details[-1].get("state") == "AWAITING_BUILDER"
            note = f"waiting for its external Builder: autopack submit-edits {run['id']} {ph['id']} FILE" if waiting else ""
            _out(f"    {ph['id']:<20} {ph['state']:<9} attempts {ph['attempts']}/{ph['max_attempts']} {commit}{note}".rstrip())
            diagnosed = [d["doctor"] for d in details if d.get("doctor")]
            if diagnosed:
                last = diagnosed[-1]
                _out(f"      last failure: {last.get('class')} -> {last.get('action')} ({last.get('source')}): {last.get('reason', '')[:160]}")


def _api(args: argparse.Namespace, settings: Settings) -> Any:
    """The API client of a client command: ``--api`` or the settings' URL, with the settings' token."""
    from autopack.client import ApiClient, sends_in_clear

    url = args.api or settings.api_url
    if settings.token and sends_in_clear(url):
        _err(f"warning: the API token goes to {url} over plain http, readable on the way; use https or a loopback address")
    return ApiClient(url, token=settings.token)


def _follow_to_end(client: Any, run_id: str, args: argparse.Namespace) -> int:
    """``run --wait`` and ``status --follow``: the run's events as they come, then the run; exit 0 on
    DONE_SUCCESS, 1 on any other end, 2 when the API cannot be reached, 3 when ``--timeout`` passed first."""
    from autopack.client import ClientError

    as_json = bool(getattr(args, "json", False))
    try:
        run = follow(client, run_id, show=not as_json, timeout=args.timeout, outage_s=args.retry_for)
    except ClientError as exc:
        _err(str(exc))
        return 2
    except WaitTimeout as exc:
        _err(f"{exc}; it goes on: autopack status {run_id} --follow")
        return 3
    if as_json:
        _out(json.dumps(run, indent=2))
    else:
        _print_run(run)
    return 0 if run["state"] == "DONE_SUCCESS" else 1


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from autopack.client import ClientError
    from autopack.errors import PlanError
    from autopack.plan import load_plan_text

    try:
        data = load_plan_text(Path(args.plan).read_text(encoding="utf-8"))
    except (OSError, PlanError) as exc:
        _err(str(exc))
        return 2
    except UnicodeDecodeError as exc:
        _err(f"{args.plan} is not UTF-8 (byte {exc.start}): save the plan as UTF-8")
        return 2
    if args.project:
        data["project"] = args.project
    client = _api(args, settings)
    # One key for this submission, sent again on every retry: a POST whose answer was lost (the web
    # process restarted under it) gets the run it made back, never a second run.
    key = uuid.uuid4().hex
    try:
        created = through_outages(client.submit, data, args.dry_run, key, outage_s=args.retry_for)
    except ClientError as exc:
        _err(str(exc))
        return 2
    if args.dry_run:
        _out(json.dumps(created["strategy"], indent=2))
        return 0
    _out(f"run {created['id']} queued on branch {created['branch']}")
    return _follow_to_end(client, created["id"], args) if args.wait else 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from autopack.client import ClientError

    client = _api(args, settings)
    if args.follow:
        return _follow_to_end(client, args.run_id, args)
    try:
        run = client.run(args.run_id)
    except ClientError as exc:
        _err(str(exc))
        return 2
    if args.json:
        _out(json.dumps(run, indent=2))
    else:
        _print_run(run)
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from autopack.client import ClientError

    try:
        run = _api(args, settings).cancel(args.run_id)
    except ClientError as exc:
        _err(str(exc))
        return 2
    _out(f"run {run['id']}: {run['state']}")
    return 0


def cmd_submit_edits(args: argparse.Namespace, settings: Settings) -> int:
    """Post an external Builder's edits for a phase that waits for them."""
    from autopack.client import ClientError

    try:
        edits = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        _err(f"cannot read {args.file}: {exc.strerror or exc}")
        return 2
    except UnicodeDecodeError as exc:
        _err(f"{args.file} is not UTF-8 (byte {exc.start}): the edits must be UTF-8 text")
        return 2
    try:
        # One key for every try: a submission whose answer was lost (a redeploy, a proxy timeout) is
        # sent again and finds its attempt, instead of becoming the next attempt's edits.
        out = through_outages(_api(args, settings).builder_result, args.run_id, args.phase, edits, args.by, uuid.uuid4().hex,
                              outage_s=args.retry_for)
    except ClientError as exc:
        _err(str(exc))
        return 2
    _out(f"run {out['run_id']} phase {out['phase']}: attempt {out['attempt']} {out['state']}")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """What the beat-scheduled reconciler does, by hand: re-enqueue lost steps, end overdue runs."""
    from autopack.engine.services import build_services
    from tasks.app import app
    from tasks.runtime import reconcile_and_enqueue

    report = reconcile_and_enqueue(app, build_services(settings, sandbox=False))  # it runs no tests
    _out(json.dumps(report.as_dict()) if args.json else
         f"re-enqueued {len(report.requeued)} step(s), ended {len(report.timed_out)} overdue run(s), "
         f"closed {report.closed_steps} step(s) of finished runs, charged {report.charged_reservations} "
         f"orphaned budget reservation(s), re-dispatched the events of {len(report.undispatched_runs)} run(s)")
    return 0


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    """What beat's cleanup does, by hand: remove the worktrees of runs over for a while."""
    from autopack.engine.cleanup import remove_finished_worktrees, remove_left_temp

    older = settings.worktree_retention_s if args.older_than is None else args.older_than
    report = remove_finished_worktrees(settings.db_url, settings.worktrees_dir, older)
    # Left by killed workers: only folders no step can still be using (older than any step may run).
    temp = remove_left_temp(settings)
    _out(json.dumps({**report.as_dict(), "temp_removed": temp}) if args.json else
         f"removed the worktrees of {len(report.removed)} finished run(s); kept {report.kept}; "
         f"left {len(report.unknown)} folder(s) of unknown runs alone; removed {len(temp)} temp folder(s) killed workers left"
         + (f"; {len(report.failed)} failed (see the log)" if report.failed else ""))
    return 1 if report.failed else 0


def cmd_budgets(args: argparse.Namespace, settings: Settings) -> int:
    """Budget calibration from this state folder's database: per category, spend against the caps."""
    from autopack.db.session import session_scope
    from autopack.engine.calibration import budget_report
    from autopack.errors import NotFound

    with session_scope(settings.db_url) as s:
        try:
            project = learning_project(s, args.project) if args.project else None
        except NotFound as exc:
            _err(str(exc))
            return 2
        report = budget_report(s, project, args.days, min_completed=args.min_completed)
    if args.json:
        _out(json.dumps(report, indent=2))
        return 0
    if not report["categories"]:
        _out(f"no finished phases in the last {args.days} days")
        return 0
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:,}"

    _out(f"{'category':<16}{'phases':>7}{'done':>6}{'at cap':>7}{'p90 tokens':>12}{'max':>9}{'token cap':>11}{'suggested':>11}  advice")
    for c in report["categories"]:
        _out(f"{c['category']:<16}{c['phases']:>7}{c['completed']:>6}{c['stopped_at_cap']:>7}{num(c['tokens_p90']):>12}"
             f"{num(c['tokens_max']):>9}{num(c['token_cap']):>11}{num(c['suggested_token_cap']):>11}  {c['advice']}: {c['reason']}")
    _out(report["note"])
    return 0


def cmd_flaky(args: argparse.Namespace, settings: Settings) -> int:
    """List a project's known-flaky tests, age the records by hand (what beat does every hour), or
    quarantine or clear one test by hand."""
    from autopack.config import load_config
    from autopack.db.session import session_scope
    from autopack.engine.flakiness import age_records, project_flaky_tests

    if args.action in ("quarantine", "clear"):
        return _flaky_by_hand(args, settings)
    if args.test_id is not None or args.reason is not None:
        _err(f"flaky {args.action} takes no test id or --reason (those are for flaky quarantine|clear)")
        return 2
    if args.action == "age":
        if args.project or args.state:
            _err("flaky age ages every project's records; it takes no --project or --state")
            return 2
        report = age_records(settings.db_url, load_config(settings.config_dir).strategy.flakiness)
        _out(json.dumps(report.as_dict()) if args.json else
             f"cleared {len(report.cleared)} record(s), forgot {len(report.forgotten)}, kept {report.kept}")
        return 0
    with session_scope(settings.db_url) as s:
        projects = _projects(s, args.project)
        if projects is None:
            return 2
        listing = {p.name: project_flaky_tests(s, p, args.state) for p in projects}
    if args.json:
        _out(json.dumps(listing if not args.project else {"project": args.project, "tests": listing[args.project]}, indent=2))
        return 0
    for name, tests in listing.items():
        _out(f"{name}: {len(tests)} known-flaky test record(s)")
        for t in tests:
            _out(f"  [{t['state']}] {t['test']}: flaky {t['flaky_count']}x in all, in {len(t['runs'])} run(s) since it was "
                 f"last cleared; {t['passes_since_flaky']} first-try pass(es) since its last flake on {t['last_flaky_at']}")
            if t["reason"]:
                _out(f"     {t['reason']}")
    return 0


def _flaky_by_hand(args: argparse.Namespace, settings: Settings) -> int:
    """``flaky quarantine|clear TEST_ID --project P [--reason TEXT]``: set one test's record by hand."""
    from autopack.db.session import session_scope
    from autopack.engine.flakiness import set_record_by_hand
    from autopack.errors import InvalidRequest, NotFound
    from autopack.flakiness import CLEARED, QUARANTINED

    if args.test_id is None or not args.project or args.state:
        _err(f"flaky {args.action} takes a test id and --project (and no --state): "
             f"autopack flaky {args.action} TEST_ID --project P [--reason TEXT]")
        return 2
    state = QUARANTINED if args.action == "quarantine" else CLEARED
    try:
        with session_scope(settings.db_url) as s:
            view = set_record_by_hand(s, learning_project(s, args.project), args.test_id, state, args.reason or "")
    except NotFound as exc:
        _err(str(exc))
        return 2
    except InvalidRequest as exc:
        _err(f"{exc.field}: {exc.message}")
        return 2
    if args.json:
        _out(json.dumps({"project": args.project, "test": view}, indent=2))
        return 0
    _out(f"{args.project}: {view['test']} is {view['state']} ({view['reason']})")
    return 0


def cmd_rules(args: argparse.Namespace, settings: Settings) -> int:
    """List, export or analyze learned rules (reads the database of this state folder)."""
    from autopack.db.session import session_scope
    from autopack.engine import learning

    with session_scope(settings.db_url) as s:
        projects = _projects(s, args.project)
        if projects is None:
            return 2
        if args.action == "analyze":
            report = learning.analyze(s, projects[0] if args.project else None)
            if args.json:
                _out(json.dumps(report, indent=2))
                return 0
            _out(f"rules: {report['rules']} · by status {report['by_status']} · by category {report['by_category']}")
            _out(f"applied {report['times_applied']} times; when carried, their failure came back in "
                 f"{report['carried_failures']} of {report['carried_phases']} phases, without them in {report['other_failures']} of {report['other_phases']}")
            _out("top failure keys:")
            for key, n in report["top_failure_keys"]:
                _out(f"  {n:>3}  {key}")
            _out("promotions by day: " + ", ".join(f"{d}: {n}" for d, n in report["promotions_by_day"].items()))
            return 0
        if args.action == "export":
            if len(projects) != 1:
                _err("export needs --project")
                return 2
            text = learning.export_json(s, projects[0])
            if args.out:
                try:
                    Path(args.out).write_text(text)
                except OSError as exc:
                    _err(f"cannot write {args.out}: {exc.strerror or exc}")
                    return 2
                _out(f"wrote {args.out}")
            else:
                print(text, end="")
            return 0
        listing = {p.name: learning.project_rules(s, p) for p in projects}
    if args.json:
        _out(json.dumps(listing if not args.project else {"project": args.project, "rules": listing[args.project]}, indent=2))
        return 0
    for name, rules in listing.items():
        _out(f"{name}: {len(rules)} rule(s)")
        for r in rules:
            e = r["effect"]
            _out(f"  #{r['id']} [{r['status']}] {r['scope']} ({r['category'] or 'any category'}) applied {r['times_applied']}x "
                 f"· carried: {e['carried_failures']}/{e['carried_phases']} failed · other: {e['other_failures']}/{e['other_phases']}")
            _out(f"     {r['text']}")
            _out(f"     from runs {', '.join(r['provenance'].get('runs', []))} (hints {r['provenance'].get('hints')})")
    return 0


def _projects(session: Any, name: str | None) -> list[Any] | None:
    """The project called ``name``, or all projects by name; None, said on stderr, if there is no
    such project."""
    from sqlalchemy import select

    from autopack.db.models import Project
    from autopack.errors import NotFound

    try:
        return [learning_project(session, name)] if name else list(session.scalars(select(Project).order_by(Project.name)))
    except NotFound as exc:
        _err(str(exc))
        return None


def learning_project(session: Any, name: str) -> Any:
    from autopack.engine.runs import get_project

    return get_project(session, name)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from autopack.demo import run_demo

    return run_demo(args, settings)


# ---------------------------------------------------------------------------------------------- parser


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from autopack.governance.calibrate import DAYS, MIN_COMPLETED  # pure, cheap to import

    p = argparse.ArgumentParser(prog="autopack", description="Autonomous, budgeted, audited software builds.")
    sub = p.add_subparsers(dest="command", required=True)

    def api_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--api", help="API base URL (default: AUTOPACK_API_URL or http://127.0.0.1:8000)")

    def wait_args(sp: argparse.ArgumentParser, flag: str, retry_note: str) -> None:
        sp.add_argument("--timeout", type=_non_negative_seconds, help=f"with {flag}: stop waiting after this many seconds (the run goes on)")
        sp.add_argument("--retry-for", type=_non_negative_seconds, default=300.0, metavar="SECONDS",
                        help="keep trying an API that cannot be reached (or answers 502/503/504) this long (default 300)"
                             + (f"; {retry_note}" if retry_note else ""))

    sp = sub.add_parser("up", help="start web, workers and beat as child processes (local profile)")
    sp.add_argument("--port", type=int, default=8000)
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("web", help="serve the API and the dashboard")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--server", choices=["gunicorn", "werkzeug"],
                    help="gunicorn (default on the prod profile) or werkzeug's development server (default on local)")
    sp.add_argument("--workers", type=int, default=2, help="gunicorn: worker processes (default 2)")
    sp.add_argument("--threads", type=int, default=8, help="gunicorn: threads per worker, each serving one request or event stream (default 8)")
    sp.set_defaults(func=cmd_web)

    sp = sub.add_parser("worker", help="run a Celery worker")
    sp.add_argument("-Q", "--queues", default="build,ci,audit,agents,events,maintenance")
    sp.add_argument("-c", "--concurrency", type=int)
    sp.add_argument("-P", "--pool")
    sp.add_argument("--loglevel", default="INFO")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("beat", help="run celery beat")
    sp.add_argument("--loglevel", default="INFO")
    sp.set_defaults(func=cmd_beat)

    sp = sub.add_parser("migrate", help="create or upgrade the database schema")
    sp.set_defaults(func=cmd_migrate)

    sp = sub.add_parser("project", help="manage projects")
    psub = sp.add_subparsers(dest="project_command", required=True)
    a = psub.add_parser("add", help="register a git repository as a project")
    a.add_argument("name")
    a.add_argument("path")
    a.add_argument("--base-branch")
    a.set_defaults(func=cmd_project_add)
    a = psub.add_parser("list", help="list projects")
    a.set_defaults(func=cmd_project_list)

    sp = sub.add_parser("run", help="submit a plan through the API")
    sp.add_argument("plan", help="plan file (YAML or JSON)")
    sp.add_argument("--project", help="project name (overrides the plan's)")
    sp.add_argument("--wait", action="store_true",
                    help="follow the run to its end: exit 0 on DONE_SUCCESS, 1 on any other end, 3 if --timeout passed first")
    wait_args(sp, "--wait", "a retried submission never starts a second run")
    sp.add_argument("--dry-run", action="store_true", help="print the compiled strategy, start nothing")
    api_arg(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("status", help="show a run (--follow: its events as they come, to its end)")
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--follow", action="store_true",
                    help="follow the run to its end, as run --wait does (same exit codes); with --json, only the final run")
    wait_args(sp, "--follow", "")
    api_arg(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("cancel", help="cancel a run")
    sp.add_argument("run_id")
    api_arg(sp)
    sp.set_defaults(func=cmd_cancel)

    sp = sub.add_parser("submit-edits", help="be the Builder of a `builder: external` phase: post its edits")
    sp.add_argument("run_id")
    sp.add_argument("phase")
    sp.add_argument("file", help="the edits (whole files, search/replace blocks or a unified diff); - reads stdin")
    sp.add_argument("--by", help="who submits (recorded on the attempt)")
    sp.add_argument("--retry-for", type=_non_negative_seconds, default=300.0, metavar="SECONDS",
                    help="keep trying an API that cannot be reached (or answers 502/503/504) this long (default 300); "
                         "the edits go to one attempt however often they are sent")
    api_arg(sp)
    sp.set_defaults(func=cmd_submit_edits)

    sp = sub.add_parser("reconcile", help="re-enqueue lost steps and end overdue runs (beat does this every 30 s)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_reconcile)

    sp = sub.add_parser("cleanup", help="remove the worktrees of finished runs (beat does this every 10 min)")
    sp.add_argument("--older-than", type=_non_negative_seconds, default=None, metavar="SECONDS",
                    help="only runs over for at least this long (default: AUTOPACK_WORKTREE_RETENTION_S, 3600)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_cleanup)

    sp = sub.add_parser("budgets", help="budget calibration: per category, phase spend against the caps, and caps that fit")
    sp.add_argument("--project")
    sp.add_argument("--days", type=_int_in(*DAYS[1:]), default=DAYS[0], help=f"phases finished in the last N days (default {DAYS[0]})")
    sp.add_argument("--min-completed", type=_int_in(*MIN_COMPLETED[1:]), default=MIN_COMPLETED[0],
                    help="completed phases a category needs for a suggestion (default 5)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_budgets)

    sp = sub.add_parser("flaky", help="known-flaky tests per project (quarantined, suspected, cleared); age: what beat does hourly; "
                                      "quarantine|clear TEST_ID: set one by hand",
                        description="list: the known-flaky test records (all projects, or --project). age: clear and forget "
                                    "records by age, as beat does hourly. quarantine TEST_ID / clear TEST_ID --project P "
                                    "[--reason TEXT]: set a test's record by hand (quarantining a test without a record makes "
                                    "one); the reason is recorded as 'by hand: TEXT'. The normal rules still apply afterwards: "
                                    "a test quarantined by hand is cleared by clear_after_passes first-try passes or "
                                    "clear_after_days days without a flake, both counted from the hand quarantine, and a "
                                    "test cleared by hand that flakes again is a suspect.")
    sp.add_argument("action", nargs="?", choices=["list", "age", "quarantine", "clear"], default="list")
    sp.add_argument("test_id", nargs="?", metavar="TEST_ID", help="with quarantine or clear: the test (e.g. tests/test_a.py::test_x)")
    sp.add_argument("--project")
    sp.add_argument("--state", choices=["quarantined", "suspected", "cleared"])
    sp.add_argument("--reason", help="with quarantine or clear: why (recorded as 'by hand: REASON')")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_flaky)

    sp = sub.add_parser("rules", help="list learned rules with provenance and effect; analyze; export")
    sp.add_argument("action", nargs="?", choices=["list", "analyze", "export"], default="list")
    sp.add_argument("--project")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--out", help="with export: the file to write (default: standard output)")
    sp.set_defaults(func=cmd_rules)

    sp = sub.add_parser("demo", help="run the example plan on a fresh demo repository, offline")
    sp.add_argument("--json", action="store_true", help="end with one JSON summary line per run")
    sp.add_argument("--runs", type=int, default=1, help="run the plan this many times on the same project (learning)")
    sp.add_argument("--live", action="store_true", help="call real models (ANTHROPIC_API_KEY or OPENAI_API_KEY) and record a new cassette")
    sp.add_argument("--cassette", help="cassette to replay or record (default: the recorded demo cassette)")
    sp.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    sp.add_argument("--script", help=argparse.SUPPRESS)  # author a cassette with a scripted model (maintainers)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:  # a bad AUTOPACK_* variable: say which, without a traceback
        for problem in exc.errors():
            _err(f"AUTOPACK_{str(problem['loc'][0]).upper()}: {problem['msg']}" if problem["loc"] else problem["msg"])
        return 2
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except subprocess.CalledProcessError as exc:
        _err(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
