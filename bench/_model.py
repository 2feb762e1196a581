"""The benchmarks' zero-latency model (loaded in-process with ``AUTOPACK_LLM_SCRIPT``): the Builder
writes the phase's one deliverable as a whole file, the Auditor approves.

``BENCH_FAIL_FIRST`` (comma-separated phase ids): the first attempt of those phases writes
``WRONG``, which the target's stub test suite fails on; the retry, whose prompt carries the
failure, writes the right content. It exercises retries (two attempts, one commit)."""

from __future__ import annotations

import os
import re

APPROVE = '{"verdict": "approve", "summary": "The deliverable is there and the gate passed.", "issues": []}'
PHASE = re.compile(r"^# Phase (\S+):", re.MULTILINE)


def respond(request) -> str:  # noqa: ANN001 - an autopack.llm.base.LLMRequest
    if request.system.startswith("You are the Auditor"):
        return APPROVE
    match = PHASE.search(request.messages[0].content)
    if match is None:
        raise ValueError("the bench model only plays the Builder and the Auditor")
    phase = match.group(1)
    retry = "## The previous attempt failed" in request.messages[0].content
    if phase in os.environ.get("BENCH_FAIL_FIRST", "").split(",") and not retry:
        return f"=== FILE: out/{phase}.txt ===\n```text\nWRONG\n```\n"
    return f"=== FILE: out/{phase}.txt ===\n```text\n{phase}\n```\n"
