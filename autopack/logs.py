"""Structured logs: every record carries the run, step, phase/attempt and Celery task it belongs to.

``bind(...)`` sets fields for the current context (a step being executed); the filter adds them to
each record as ``record.ctx`` (``run=… step=… task=…``) and as attributes, and ``JsonFormatter``
writes one JSON object per line when ``AUTOPACK_LOG_FORMAT=json``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_FIELDS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("autopack_log_fields", default={})
KEYS = ("run", "step", "step_id", "phase", "attempt", "task")


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    token = _FIELDS.set({**_FIELDS.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _FIELDS.reset(token)


def current() -> dict[str, Any]:
    fields = dict(_FIELDS.get())
    if "task" not in fields:
        try:
            from celery import current_task

            if current_task and current_task.request and current_task.request.id:
                fields["task"] = current_task.request.id
        except Exception:  # noqa: BLE001 - logging must never fail
            pass
    return fields


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        for key in KEYS:
            setattr(record, key, fields.get(key))
        record.ctx = " ".join(f"{k}={fields[k]}" for k in KEYS if fields.get(k) is not None)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in KEYS:
            value = getattr(record, key, None)
            if value is not None:
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


TEXT_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s [%(ctx)s]"


def install(handler: logging.Handler) -> None:
    """Give ``handler`` the context filter and Autopack's format (JSON or text)."""
    handler.addFilter(ContextFilter())
    if os.environ.get("AUTOPACK_LOG_FORMAT") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))


def setup_celery_logging(logger: logging.Logger, **_: Any) -> None:
    for handler in logger.handlers:
        install(handler)
