"""Test support: poll Flower's workers API until it lists at least three workers, each with the
queues it consumes (Flower fills those in from a broadcast that can miss a busy worker's reply)."""

from __future__ import annotations

import base64
import json
import time
import urllib.request


def flower_workers(port: int, auth: str, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers?refresh=1",
                                 headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                workers = json.loads(resp.read())
                if len(workers) >= 3 and all(info.get("active_queues") for info in workers.values()):
                    return workers
                last = workers
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"Flower did not list the workers: {last}")
