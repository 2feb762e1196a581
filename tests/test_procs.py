"""``free_port``: a loopback port that is free, below the kernel's ephemeral range when there is room."""

from __future__ import annotations

import socket

import pytest

from autopack.procs import _ephemeral_low, free_port


def test_free_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # chosen, not a constant
    for port in ports:
        if low > 11_000:
            assert 10_000 <= port < low, (port, low)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_taken_by_a_listener_is_not_handed_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import autopack.procs as procs

    if _ephemeral_low() <= 11_000:
        pytest.skip("no room below the ephemeral range here: the kernel picks (bind to port 0)")
    spare = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken, taken, spare])
        monkeypatch.setattr(procs.random, "randrange", lambda *_: next(picks))
        assert free_port() == spare
