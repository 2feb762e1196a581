"""What a task shell shares: the process's engine services, step dispatch and the step task base."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task

from autopack.engine.services import Services, build_services
from autopack.engine.steps import STEPS, Step, fail_step
from autopack.errors import RetryableError
from autopack.settings import get_settings

log = logging.getLogger("autopack.tasks")
_services: Services | None = None
_lock = threading.Lock()


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


def enqueue(celery: Celery, steps: list[Step]) -> None:
    from tasks.app import ROUTES

    for step, arg in steps:
        name, queue = ROUTES[step]
        celery.send_task(name, args=[arg], queue=queue)


def run_step(celery: Celery, step: str, arg: Any) -> list[Step]:
    """Run one engine step and enqueue what comes next (after the step's own commit)."""
    nxt = STEPS[step](services(), arg)
    log.info("step %s(%s) -> %s", step, arg, nxt)
    enqueue(celery, nxt)
    return nxt


class StepTask(Task):  # type: ignore[misc]
    """Base of the pipeline tasks: passing faults are retried with backoff; a step that fails for
    good ends its run with the reason (it never leaves the run hanging)."""

    autoretry_for = (RetryableError,)
    retry_backoff = True
    retry_backoff_max = 60
    max_retries = 5
    step: str = ""

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        try:
            fail_step(services(), self.step, args[0], exc)
        except Exception:  # noqa: BLE001 - the failure itself is already logged by Celery
            log.exception("could not record the failure of %s%s", self.name, tuple(args))


def _warm(**_: Any) -> None:
    """Build the services when a pool process starts, not on its first task."""
    try:
        services()
    except Exception:  # noqa: BLE001 - the first task will raise it properly
        log.exception("could not build the engine services")


from celery.signals import worker_process_init  # noqa: E402

worker_process_init.connect(_warm, weak=False)
