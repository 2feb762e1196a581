"""The local profile's broker: messages appear whole, so a consumer never reads a half-written one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kombu import Connection

from tasks.app import app


def _conn(folder: Path) -> Connection:
    opts = {"data_folder_in": str(folder), "data_folder_out": str(folder), "processed_folder": str(folder / "p"),
            "store_processed": False, "polling_interval": 0.01}
    return Connection("filesystem://", transport="tasks.fs_transport:Transport", transport_options=opts)


def test_the_app_uses_it_on_the_local_profile() -> None:
    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "tasks.fs_transport"


def test_a_message_being_written_is_not_consumed(tmp_path: Path) -> None:
    with _conn(tmp_path) as conn:
        q = conn.SimpleQueue("jobs")
        # What a writer leaves while it is still writing: a hidden partial file, empty for now.
        (tmp_path / ".partial-1_x.jobs.msg").write_bytes(b"")
        with pytest.raises(q.Empty):
            q.get(block=False)
        q.put({"n": 1})
        assert q.get(timeout=2).payload == {"n": 1}
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".partial-1_x.jobs.msg"]
        q.close()


def test_a_busy_writer_and_reader_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    n = 400
    received: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with _conn(tmp_path) as conn:
                q = conn.SimpleQueue("jobs")
                while len(received) < n:
                    msg = q.get(timeout=30)
                    received.append(msg.payload["n"])
                    msg.ack()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    with _conn(tmp_path) as conn:
        q = conn.SimpleQueue("jobs")
        for i in range(n):
            q.put({"n": i, "pad": "x" * 20000})
    reader.join(60)
    assert not errors, errors
    assert sorted(received) == list(range(n))
