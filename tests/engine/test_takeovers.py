"""A worker paused past its lease, and a cancel, meeting another worker's transaction on
PostgreSQL: the takeover wins cleanly, the cancel cancels, and a cancelled run gets no more writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from autopack.db.models import Attempt, Event, Phase, Run, StepRow
from autopack.db.session import session_scope
from autopack.engine.leases import claim
from autopack.engine.runner import create_step, execute
from autopack.engine.services import Services
from autopack.engine.store import StaleState
from autopack.settings import Settings
from autopack.workspace.git import Git
from tests.engine.harness import demo_plan, make_services, on_postgres, register, submit


def _no_model(req):  # type: ignore[no-untyped-def]
    raise AssertionError(f"no model call expected here: {req.system[:40]}")


def _run_row(svc: Services, run_id: str) -> Run:
    with session_scope(svc.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        return run


def _step_row(svc: Services, sid: int) -> StepRow:
    with session_scope(svc.db_url) as s:
        row = s.get(StepRow, sid)
        assert row is not None
        return row


def _running(svc: Services, run_id: str, head: str | None = None) -> int:
    """The run RUNNING, its first tier RUNNING, its first phase QUEUED; returns that phase's id."""
    with session_scope(svc.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.state = "RUNNING"
        if head is not None:
            run.base_commit = run.head_commit = head
        ph = s.scalars(select(Phase).where(Phase.run_id == run_id).order_by(Phase.index)).first()
        assert ph is not None
        ph.tier.state = "RUNNING"
        return ph.id


def _shell_failure(svc: Services, sid: int, exc: BaseException) -> None:
    """What Celery does when a step task raised ``exc``: the task shell's ``on_failure``."""
    from tasks.build import build_phase as task
    from tasks.runtime import set_services

    set_services(svc)
    try:
        task.on_failure(exc, "task-id", [sid], {}, None)
    finally:
        set_services(None)


# ------------------------------------------------------------------------------------------------ 2


def _wait_for_lock_waiters(admin_url: str, n: int, timeout: float = 20.0) -> None:
    engine = create_engine(admin_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                waiting = conn.execute(text(
                    "select count(*) from pg_stat_activity where datname = current_database() "
                    "and wait_event_type = 'Lock'")).scalar_one()
            if waiting >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"{n} sessions never waited on a lock")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_paused_build_whose_lease_was_taken_over_neither_commits_nor_kills_the_run(
        pg_url: str, tmp_path: Path, demo_repo: Path) -> None:
    """``guard`` share-locks the step row: worker A, held up inside build_phase's first transaction
    (the new attempt, QUEUED → EXECUTING, no fenced write of the step in it) past its lease, either
    commits before B's claim or not at all. Before, B claimed in between, read the phase as QUEUED,
    lost its compare-and-set to A's late commit and raised StaleState, which the task shell took for
    a step failing for good: the run ended DONE_FAILED_INFRASTRUCTURE.

    A is held inside its transaction here by a third session holding the phase's row (as a
    worker paused there, or a slow statement, would); nothing is patched."""
    settings, _ = on_postgres(pg_url, tmp_path, demo_repo)
    svc_a, _ = make_services(settings, lambda req: "")
    svc_b, _ = make_services(settings, lambda req: "")
    run_id = submit(svc_a, demo_plan())
    head = Git(demo_repo).rev_parse("refs/heads/main")
    phase_id = _running(svc_a, run_id, head)
    sid, _ = create_step(svc_a.db_url, run_id, "build", phase_id)

    holder = create_engine(pg_url)
    conn = holder.connect()
    tx = conn.begin()
    conn.execute(text("select id from phases where id = :id for update"), {"id": phase_id})
    errors: dict[str, BaseException] = {}

    def worker_a() -> None:
        from autopack.engine import runner

        got = claim(svc_a.db_url, sid, "A", ttl_s=-1)  # its lease runs out while it is held up
        assert got is not None
        try:
            runner._run_claimed(svc_a, got)
        except BaseException as exc:  # noqa: BLE001
            errors["A"] = exc

    def worker_b() -> None:
        try:
            execute(svc_b, sid, owner="B")
        except BaseException as exc:  # noqa: BLE001
            errors["B"] = exc

    ta = threading.Thread(target=worker_a)
    ta.start()
    _wait_for_lock_waiters(pg_url, 1)  # A is inside its transaction, past its guard
    tb = threading.Thread(target=worker_b)
    tb.start()
    _wait_for_lock_waiters(pg_url, 2)  # B re-claimed the step and read the phase as QUEUED
    tx.rollback()
    conn.close()
    holder.dispose()
    ta.join(60)
    tb.join(60)
    assert not ta.is_alive() and not tb.is_alive()

    for exc in errors.values():  # what Celery then does with a step task that raised
        _shell_failure(svc_b, sid, exc)
    run = _run_row(svc_b, run_id)
    assert run.state != "DONE_FAILED_INFRASTRUCTURE", f"a takeover ended the run: {run.state}: {run.failure_reason}"
    assert not any(isinstance(e, StaleState) for e in errors.values()), f"a takeover raced into StaleState: {errors}"


# ------------------------------------------------------------------------------------------------ 3


@pytest.mark.postgres
def test_a_cancel_that_meets_a_run_transition_cancels_the_run_instead_of_answering_500(
        pg_url: str, tmp_path: Path, demo_repo: Path) -> None:
    """A worker's transaction moves the run (here PLANNING → RUNNING, take_baseline's last
    transaction) while a cancel arrives: ``cancel_run`` locks the row and reads it again, so the
    cancel lands. Before, its compare-and-set on the state it had read matched no row:
    ``StaleState``, answered 500, and the run went on uncancelled."""
    from autopack.engine.store import transition
    from web import create_app

    settings, svc = on_postgres(pg_url, tmp_path, demo_repo)
    run_id = submit(svc, demo_plan())
    with session_scope(svc.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.state = "PLANNING"
    client = create_app(settings, enqueue=lambda steps: None, broker_check=lambda: None).test_client()

    worker = create_engine(pg_url)
    conn = worker.connect()
    tx = conn.begin()
    from sqlalchemy.orm import Session

    ws = Session(bind=conn)
    wrun = ws.get(Run, run_id)
    assert wrun is not None
    transition(ws, wrun, "RUNNING")  # the worker's transaction, not committed yet
    answer: dict[str, Any] = {}

    def cancel() -> None:
        resp = client.post(f"/runs/{run_id}/cancel")
        answer["status"], answer["body"] = resp.status_code, resp.get_data(as_text=True)[:300]

    t = threading.Thread(target=cancel)
    t.start()
    _wait_for_lock_waiters(pg_url, 1)  # the cancel read PLANNING and waits on the row
    ws.flush()
    tx.commit()
    ws.close()
    conn.close()
    worker.dispose()
    t.join(30)
    assert not t.is_alive()

    state = _run_row(svc, run_id).state
    assert answer["status"] != 500, f"cancel answered 500 ({answer['body']!r}); the run is {state}"
    assert state == "CANCELLED"


def test_a_build_failure_landing_after_a_cancel_writes_nothing(local_settings: Settings) -> None:
    """A build that fails after the run was cancelled records nothing and schedules no decide step:
    the run's last event stays ``run.cancelled`` (the probe and audit steps: test_pipeline.py)."""
    from autopack.engine import runs
    from autopack.engine.leases import StepContext
    from autopack.engine.steps import _attempt_failed

    svc, _ = make_services(local_settings, _no_model)
    register(local_settings, Path(local_settings.state_dir) / "no-repo")
    run_id = submit(svc, demo_plan())
    phase_id = _running(svc, run_id)
    with session_scope(svc.db_url) as s:
        a = Attempt(phase_id=phase_id, run_id=run_id, number=1, state="EXECUTING", model="m")
        s.add(a)
        s.flush()
        attempt_id = a.id
    with session_scope(svc.db_url) as s:
        runs.cancel_run(s, run_id)
    sid, _ = create_step(svc.db_url, run_id, "build", phase_id)
    got = claim(svc.db_url, sid, "w", ttl_s=60)
    assert got is not None
    assert _attempt_failed(svc, StepContext(sid, got.token, run_id), attempt_id, "edit_invalid", "no edits in the answer") == []
    with session_scope(svc.db_url) as s:
        a = s.get(Attempt, attempt_id)
        assert a is not None and (a.state, a.failure_class) == ("EXECUTING", None)
        types = [e.type for e in s.scalars(select(Event).where(Event.run_id == run_id).order_by(Event.seq))]
        assert types[-1] == "run.cancelled"
        assert s.scalar(select(StepRow.id).where(StepRow.run_id == run_id, StepRow.name == "decide")) is None


@pytest.mark.sandbox
def test_a_cancel_between_the_ref_move_and_its_record_takes_the_commit_back_off_the_branch(
        local_settings: Settings, demo_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decide moves the integration branch to the accepted candidate, then records the phase
    complete. A cancel landing in between: the phase is not recorded, so the branch is moved back
    to the run's head (it holds exactly one commit per completed phase)."""
    from autopack.engine import runs
    from autopack.engine import steps as steps_module
    from tests.engine.harness import demo_model, drive, view

    svc, _ = make_services(local_settings, demo_model())
    register(local_settings, demo_repo)
    run_id = submit(svc, demo_plan())

    def cancel_there(name: str) -> None:
        if name == "after_ref_moved":
            with session_scope(svc.db_url) as s:
                runs.cancel_run(s, run_id)

    monkeypatch.setattr(steps_module, "crash_point", cancel_there)
    drive(svc, ("start_run", run_id))
    v = view(svc, run_id)
    assert v["state"] == "CANCELLED" and all(p["state"] != "COMPLETE" for t in v["tiers"] for p in t["phases"])
    assert Git(demo_repo).rev_parse(f"refs/heads/{v['branch']}") == v["head_commit"] == v["base_commit"]
