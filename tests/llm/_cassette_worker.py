"""Child-process body for the concurrent-recording test (kept light: no SDK imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autopack.llm.base import LLMRequest, Message
from autopack.llm.cassette import RecordingClient, ScriptedClient


def record_many(path: str, worker: int, count: int, start: Any) -> None:
    # Each answer is far larger than PIPE_BUF, and all workers wait on the ``start`` barrier so
    # their writes overlap: a line written in several pieces would come out torn (checked by hand:
    # writing each line in 4 KiB pieces breaks a dozen or more lines of this test's file).
    padding = f"worker {worker} " * 2000
    client = RecordingClient(ScriptedClient(lambda r: padding + r.messages[-1].content), Path(path))
    start.wait()
    for i in range(count):
        request = LLMRequest(
            model="model-a",
            system="You are the Builder.",
            messages=[Message(role="user", content=f"w{worker}-i{i}")],
            max_tokens=100_000,
        )
        client.complete(request)
