"""What a request that hit a database error is answered, for the API (JSON) and the dashboard (HTML)
alike, and what is logged of it: the driver's message may name hosts, so it goes to the log only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flask import request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from autopack.db.problems import database_problem

log = logging.getLogger("autopack.web")


@dataclass(frozen=True)
class DatabaseAnswer:
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def database_answer(exc: DBAPIError | PoolTimeout) -> DatabaseAnswer:
    """503 with ``Retry-After`` for a database that is away (restarting, failing over, out of
    connections), 500 naming ``autopack migrate`` for a schema older than the code, else a plain 500."""
    problem = database_problem(exc)
    if problem == "unavailable":
        log.warning("database unavailable for %s %s: %s", request.method, request.path, type(exc).__name__)
        return DatabaseAnswer(503, "unavailable", "the database is unavailable; try again shortly", {"Retry-After": "5"})
    if problem == "schema":
        log.error("database schema out of date for %s %s: %s", request.method, request.path, exc.orig)
        return DatabaseAnswer(500, "schema_out_of_date", "the database schema is older than this Autopack: run autopack migrate")
    log.exception("database error for %s %s", request.method, request.path)
    return DatabaseAnswer(500, "internal_error", "internal error (see the web process's log)")
