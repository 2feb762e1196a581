"""What a task shell shares: the process's engine services, step dispatch and the step task base."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from autopack.engine.faults import crash_point
from autopack.engine.runner import ReconcileReport, execute_step, fail_step_row, is_infrastructure_error, note_time_limit, reconcile
from autopack.engine.services import Services, build_services
from autopack.errors import RetryableError
from autopack.events.dispatch import dispatch_pending
from autopack.settings import get_settings

log = logging.getLogger("autopack.tasks")
_services: Services | None = None
_lock = threading.Lock()

StepRef = tuple[int, str]  # (step id, step name)


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            _services = build_services(get_settings())
        return _services


def set_services(value: Services | None) -> None:
    """Install the services a worker uses (tests running a worker in a thread)."""
    global _services
    with _lock:
        _services = value


def enqueue(celery: Celery, steps: list[StepRef]) -> None:
    """Ring the doorbell of committed step rows: the message carries the step id only."""
    from tasks.app import ROUTES

    for step_id, name in steps:
        task, queue = ROUTES[name]
        celery.send_task(task, args=[step_id], queue=queue)


def send_dispatcher(celery: Celery, run_id: str) -> None:
    """Send the event dispatcher for ``run_id``'s committed, undispatched events."""
    celery.send_task("autopack.events.dispatch", args=[run_id], queue="events")


def reconcile_and_enqueue(celery: Celery, svc: Services) -> ReconcileReport:
    """The reconciler (beat's task and ``autopack reconcile``): reconcile, then send the steps it
    handed back and a dispatcher for each run with events not yet dispatched."""
    report = reconcile(svc)
    enqueue(celery, report.requeued)
    for run_id in report.undispatched_runs:  # events a dispatcher did not finish
        send_dispatcher(celery, run_id)
    return report


def run_step(celery: Celery, step_id: int) -> list[StepRef]:
    """Run one step row under its lease and enqueue what it created (already committed)."""
    nxt, run_id = execute_step(services(), step_id)
    log.info("step %s -> %s", step_id, nxt)
    try:
        enqueue(celery, nxt)
    except Exception as exc:  # noqa: BLE001 - all is committed: the reconciler enqueues it
        log.warning("could not enqueue %s (%s); the reconciler will", nxt, exc)
    if run_id is not None:  # this worker ran the step: its events go out
        dispatch_after_step(celery, run_id)
    crash_point("before_ack")
    return nxt


def dispatch_after_step(celery: Celery, run_id: str) -> None:
    """The events a step committed go out from its own worker, after the next steps were sent:
    mirrored and marked here, without a message and a task on the events queue each, up to the
    first event a handler subscribes to, which (with the rest) is the events queue's. If this
    fails, they go to the events queue too; if that cannot be reached either, the reconciler
    re-dispatches them (undispatched after 5 s)."""
    svc = services()
    try:
        report = dispatch_pending(svc, run_id, mirror=svc.mirror, defer_handled=True)
    except Exception as exc:  # noqa: BLE001 - committed: the events queue or the reconciler will
        log.warning("could not dispatch the events of run %s here (%s); sending the dispatcher", run_id, exc)
    else:
        if not report.deferred:
            return
    try:
        send_dispatcher(celery, run_id)
    except Exception as exc:  # noqa: BLE001 - committed: the reconciler re-dispatches them
        log.warning("could not send the dispatcher of run %s (%s); the reconciler will", run_id, exc)


class StepTask(Task):  # type: ignore[misc]
    """Base of the pipeline tasks: passing faults are retried with backoff; a step that fails for
    good ends its run with the reason (it never leaves the run hanging)."""

    autoretry_for = (RetryableError,)
    retry_backoff = True
    retry_backoff_max = 60
    max_retries = 5

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        if is_infrastructure_error(exc):
            log.warning("step %s hit an infrastructure error (%s); its lease will expire and the reconciler retries it", args[0], exc)
            return
        if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
            # A hung provider or git: another delivery may well finish it. The lease (no longer
            # renewed) runs out and the reconciler sends it again; a step that keeps running over
            # is given up after max_deliveries, which fails its phase rather than the whole run.
            log.warning("step %s ran over its time limit (%s); its lease will expire and the reconciler retries it", args[0],
                        type(exc).__name__)
            try:
                note_time_limit(services(), int(args[0]), exc)
            except Exception as note_exc:  # noqa: BLE001 - only the wording of a later give-up depends on it
                log.warning("could not note the time limit of step %s (%s)", args[0], note_exc)
            return
        try:
            run_id = fail_step_row(services(), int(args[0]), exc)
        except Exception:  # noqa: BLE001 - the failure itself is already logged by Celery
            log.exception("could not record the failure of %s%s", self.name, tuple(args))
            return
        if run_id is None:
            return
        try:  # the run.finished just written: its postmortem and rules now, not at the reconciler's next pass
            send_dispatcher(self.app, run_id)
        except Exception as send_exc:  # noqa: BLE001 - committed: the reconciler re-dispatches it
            log.warning("could not send the dispatcher of run %s (%s); the reconciler will", run_id, send_exc)


def _warm(**_: Any) -> None:
    """Build the services when a pool process starts, not on its first task."""
    try:
        services()
    except Exception:  # noqa: BLE001 - the first task will raise it properly
        log.exception("could not build the engine services")


from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init  # noqa: E402

from autopack.logs import setup_celery_logging  # noqa: E402

worker_process_init.connect(_warm, weak=False)
after_setup_logger.connect(setup_celery_logging, weak=False)
after_setup_task_logger.connect(setup_celery_logging, weak=False)
