"""A bare Celery choreography with the same hops per phase as Autopack's pipeline (build → probe →
audit → decide → next build), on the same broker and queues, doing nothing in each task."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("BARE_BROKER", "redis://127.0.0.1:6379/13")
HOPS = (("bare.build", "build"), ("bare.probe", "ci"), ("bare.audit", "audit"), ("bare.decide", "events"))

app = Celery("bare", broker=BROKER)
app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True, worker_prefetch_multiplier=1,
                task_ignore_result=True, broker_connection_retry_on_startup=True)


def _hop(index: int, phase: int, phases: int, key: str) -> None:
    nxt = index + 1
    if nxt == len(HOPS):
        phase, nxt = phase + 1, 0
        if phase == phases:
            redis.Redis.from_url(BROKER).set(key, repr(time.time()))
            return
    name, queue = HOPS[nxt]
    app.send_task(name, args=[nxt, phase, phases, key], queue=queue)


for _i, (_name, _queue) in enumerate(HOPS):
    app.task(name=_name)(_hop)
