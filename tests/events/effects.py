"""Two test handlers whose effect is a row in ``handler_effects`` (written in the handler's
transaction, so exactly-once delivery is visible as exactly one row per event and handler)."""

from __future__ import annotations

from sqlalchemy import text

from autopack.events.dispatch import Handler

TYPES = frozenset({"run.queued", "run.cancelled"})


def create_table(session) -> None:  # type: ignore[no-untyped-def]
    session.execute(text("CREATE TABLE IF NOT EXISTS handler_effects (event_id INTEGER, handler VARCHAR(32))"))


def _record(name: str):  # type: ignore[no-untyped-def]
    def fn(session, services, event) -> None:  # type: ignore[no-untyped-def]
        session.execute(text("INSERT INTO handler_effects (event_id, handler) VALUES (:e, :h)"), {"e": event["id"], "h": name})
    return fn


def effect_handlers() -> list[Handler]:
    return [Handler("first", TYPES, _record("first")), Handler("second", TYPES, _record("second"))]
