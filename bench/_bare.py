"""Autopack's Celery app plus a bare choreography of no-op tasks, for ``orchestration.py``.

Workers started with ``celery -A _bare`` run Autopack's tasks and these on the same broker, the same
queues, the same Celery settings (acks late, prefetch 1, results and task events on) and in the same
processes, so the only difference left is what Autopack's steps do.

A bare phase is the pipeline's hops with nothing in them: build (queue build) → probe (ci) → audit
(audit) → decide (events) → the next phase's build, each hop a task that sends the next one by
name. With ``dispatch`` each hop also sends a no-op to ``events``, as Autopack's task shell sends
the event dispatcher after every step. ``decide`` pushes its time on a Redis list, so the driver
measures the same interval as for Autopack (one decide to the next).
"""

from __future__ import annotations

import time

import redis

from tasks.app import app

HOPS = (("bench.bare.build", "build"), ("bench.bare.probe", "ci"), ("bench.bare.audit", "audit"), ("bench.bare.decide", "events"))
_redis: redis.Redis | None = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(app.conf.broker_url)
    return _redis


def start(key: str, phases: int, dispatch: bool) -> None:
    """Send the first hop of a chain of ``phases`` bare phases; its decides are pushed on ``key``."""
    app.send_task(HOPS[0][0], args=[key, 0, 0, phases, dispatch], queue=HOPS[0][1])


def _hop(key: str, phase: int, index: int, phases: int, dispatch: bool) -> None:
    if index == len(HOPS) - 1:
        _r().rpush(key, repr(time.time()))
        phase, index = phase + 1, 0
        if phase == phases:
            if dispatch:
                app.send_task("bench.bare.dispatch", args=[key], queue="events")
            return
    else:
        index += 1
    name, queue = HOPS[index]
    app.send_task(name, args=[key, phase, index, phases, dispatch], queue=queue)
    if dispatch:
        app.send_task("bench.bare.dispatch", args=[key], queue="events")


for _name, _queue in HOPS:
    app.task(name=_name)(_hop)


@app.task(name="bench.bare.dispatch")
def _dispatch(key: str) -> None:
    return None
