"""Structured logs carry run, step, phase/attempt and task ids."""

from __future__ import annotations

import io
import json
import logging

from autopack.logs import bind, install


def _logger(stream: io.StringIO, monkeypatch, fmt: str | None) -> logging.Logger:  # type: ignore[no-untyped-def]
    if fmt:
        monkeypatch.setenv("AUTOPACK_LOG_FORMAT", fmt)
    else:
        monkeypatch.delenv("AUTOPACK_LOG_FORMAT", raising=False)
    handler = logging.StreamHandler(stream)
    install(handler)
    logger = logging.getLogger(f"autopack.test.{fmt}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_json_lines_carry_the_bound_ids(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    logger = _logger(stream, monkeypatch, "json")
    with bind(run="r1", step="build", step_id=7, phase="3"):
        with bind(task="t-9"):
            logger.info("hello %s", "world")
        logger.info("after")
    logger.info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0] | {"ts": None} == {"ts": None, "level": "INFO", "logger": "autopack.test.json", "msg": "hello world",
                                      "run": "r1", "step": "build", "step_id": 7, "phase": "3", "task": "t-9"}
    assert "task" not in lines[1] and lines[1]["run"] == "r1"
    assert "run" not in lines[2]


def test_text_lines_end_with_the_context(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    logger = _logger(stream, monkeypatch, None)
    with bind(run="r2", step="probe", attempt="5"):
        logger.warning("slow")
    assert stream.getvalue().rstrip().endswith("slow [run=r2 step=probe attempt=5]")
