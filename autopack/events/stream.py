"""The Redis Streams mirror of the event table (prod profile).

Each event is appended once to ``autopack:events`` (bounded with ``MAXLEN ~``): a Lua script sets a
per-event marker and appends in one atomic step, so a re-dispatched event is not appended twice.
Outside consumers read through consumer groups and resume from their pending entries after a crash.
"""

from __future__ import annotations

import json
from typing import Any

import redis

STREAM = "autopack:events"
MARKER = "autopack:events:mirrored:"
MAXLEN = 100_000
MARKER_TTL_S = 7 * 24 * 3600

_APPEND = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
end
return false
"""


def event_fields(event: dict[str, Any]) -> dict[str, str]:
    return {
        "event_id": str(event["id"]),
        "run": event["run_id"],
        "seq": str(event["seq"]),
        "type": event["type"],
        "phase": event.get("phase_key") or "",
        "payload": json.dumps(event.get("payload") or {}, sort_keys=True, default=str),
    }


DEFAULT_GROUP = "autopack-views"


class StreamMirror:
    def __init__(self, client: redis.Redis, stream: str = STREAM, maxlen: int = MAXLEN, group: str | None = DEFAULT_GROUP) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.group = group
        self._group_ready = False
        self._append = client.register_script(_APPEND)

    def _ensure_group(self) -> None:
        # A standing consumer group from the stream's start, so live views can follow and resume.
        if self.group and not self._group_ready:
            ensure_group(self.client, self.group, self.stream, start="0")
            self._group_ready = True

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> StreamMirror:
        return cls(redis.Redis.from_url(url, socket_timeout=5), **kw)

    def append(self, event: dict[str, Any]) -> str | None:
        """Append once; returns the stream id, or None when this event was already mirrored."""
        self._ensure_group()
        flat: list[str] = []
        for k, v in event_fields(event).items():
            flat += [k, v]
        res = self._append(keys=[self.stream, f"{MARKER}{self.stream}:{event['id']}"], args=[MARKER_TTL_S, self.maxlen, *flat])
        if not res:
            return None
        return res.decode() if isinstance(res, bytes) else str(res)


def ensure_group(client: redis.Redis, group: str, stream: str = STREAM, start: str = "0") -> None:
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_group(client: redis.Redis, group: str, consumer: str, *, count: int = 100, block_ms: int | None = None,
               pending: bool = False, stream: str = STREAM) -> list[tuple[str, dict[str, str]]]:
    """Entries for ``consumer``: its own unacknowledged ones when ``pending`` (resume after a crash),
    else new ones.

    An unacknowledged entry the stream's ``MAXLEN`` trimmed while its consumer was down comes back
    from Redis with no fields: it is acknowledged here and skipped (the events themselves stay in
    the database: ``GET /runs/<id>/events``), so a resuming consumer gets events, not empty entries,
    and its later unacknowledged entries are not stuck behind them."""
    while True:
        resp = client.xreadgroup(group, consumer, {stream: "0" if pending else ">"}, count=count, block=block_ms)
        out: list[tuple[str, dict[str, str]]] = []
        trimmed: list[Any] = []
        for _name, entries in resp or []:
            for entry_id, fields in entries:
                if not fields:
                    trimmed.append(entry_id)
                    continue
                out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                            {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}))
        if trimmed:
            client.xack(stream, group, *trimmed)
        if out or not trimmed:
            return out
