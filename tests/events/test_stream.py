"""The Redis Streams mirror: each event appended once even when dispatched twice; a consumer group
reader that crashes resumes from its pending entries and sees every event exactly once."""

from __future__ import annotations

import pytest
import redis

from autopack.events.stream import StreamMirror, ensure_group, read_group
from tests.conftest import redis_db

pytestmark = pytest.mark.redis


@pytest.fixture()
def client(redis_url: str):  # type: ignore[no-untyped-def]
    c = redis.Redis.from_url(redis_db(5))
    c.flushdb()
    yield c
    c.flushdb()


def _event(i: int) -> dict:  # type: ignore[type-arg]
    return {"id": i, "run_id": "r1", "seq": i, "type": "phase.complete", "phase_key": "p", "payload": {"n": i}}


def test_each_event_is_appended_once(client) -> None:  # type: ignore[no-untyped-def]
    mirror = StreamMirror(client, stream="t:events")
    ids = [mirror.append(_event(i)) for i in range(1, 6)]
    assert all(ids)
    assert [mirror.append(_event(i)) for i in range(1, 6)] == [None] * 5  # re-dispatch: no duplicates
    assert client.xlen("t:events") == 5


def test_bounded_length(client) -> None:  # type: ignore[no-untyped-def]
    mirror = StreamMirror(client, stream="t:bounded", maxlen=10)
    for i in range(1, 400):
        mirror.append(_event(i))
    assert client.xlen("t:bounded") < 400  # trimmed approximately (MAXLEN ~)


def test_consumer_resumes_after_a_crash_and_sees_every_event_once(client) -> None:  # type: ignore[no-untyped-def]
    mirror = StreamMirror(client, stream="t:cg")
    ensure_group(client, "views", stream="t:cg")
    ensure_group(client, "views", stream="t:cg")  # idempotent
    for i in range(1, 11):
        mirror.append(_event(i))
    seen: list[str] = []
    # The consumer takes 6, acknowledges 3, then crashes.
    first = read_group(client, "views", "c1", count=6, stream="t:cg")
    for entry_id, fields in first[:3]:
        seen.append(fields["event_id"])
        client.xack("t:cg", "views", entry_id)
    # Restarted: first its own pending entries, then new ones.
    for pending in (True, False):
        for entry_id, fields in read_group(client, "views", "c1", count=100, pending=pending, stream="t:cg"):
            seen.append(fields["event_id"])
            client.xack("t:cg", "views", entry_id)
    for i in range(11, 14):  # events keep coming after the restart
        mirror.append(_event(i))
    for entry_id, fields in read_group(client, "views", "c1", count=100, stream="t:cg"):
        seen.append(fields["event_id"])
        client.xack("t:cg", "views", entry_id)
    assert seen == [str(i) for i in range(1, 14)]
    assert read_group(client, "views", "c1", pending=True, stream="t:cg") == []


def test_the_mirror_keeps_a_standing_consumer_group(client) -> None:  # type: ignore[no-untyped-def]
    mirror = StreamMirror(client, stream="t:std")
    mirror.append(_event(1))
    groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in client.xinfo_groups("t:std")}
    assert groups == {"autopack-views"}
    assert [f["event_id"] for _, f in read_group(client, "autopack-views", "ui", stream="t:std")] == ["1"]


def test_a_consumer_resuming_after_its_pending_entries_were_trimmed_gets_events_not_empty_entries(client) -> None:  # type: ignore[no-untyped-def]
    """A consumer down long enough for ``MAXLEN ~`` to trim the entries it had read but not
    acknowledged resumes with ``read_group(pending=True)``: it gets its entries still there, never
    entries without fields (which a consumer reading ``fields["event_id"]`` crashes on, at every
    restart, since nothing acknowledged them), and the trimmed ones are acknowledged."""
    mirror = StreamMirror(client, stream="t:trimmed", maxlen=10)
    for i in range(1, 101):
        mirror.append(_event(i))
    first = read_group(client, "autopack-views", "c1", stream="t:trimmed", count=500)  # then it crashes
    assert first
    for i in range(101, 401):  # the run goes on while the consumer is down
        mirror.append(_event(i))
    still = {e[0].decode() for e in client.xrange("t:trimmed")}
    assert any(entry_id not in still for entry_id, _ in first)  # some of its unacknowledged entries were trimmed
    mine = read_group(client, "autopack-views", "c1", stream="t:trimmed", count=500)  # the new ones, unacknowledged
    resumed = read_group(client, "autopack-views", "c1", pending=True, stream="t:trimmed", count=1000)
    assert resumed and all("event_id" in fields for _, fields in resumed)
    expected = [entry_id for entry_id, _ in first if entry_id in still] + [entry_id for entry_id, _ in mine]
    assert [entry_id for entry_id, _ in resumed] == expected
    assert client.xpending("t:trimmed", "autopack-views")["pending"] == len(expected)  # the trimmed ones were acknowledged
