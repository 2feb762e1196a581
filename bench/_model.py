"""Zero-latency scripted model for the benchmarks: the Builder writes the phase's deliverable,
the Auditor approves."""

from __future__ import annotations

import re


def respond(request) -> str:  # noqa: ANN001 - an LLMRequest
    if request.system.startswith("You are the Auditor"):
        return '{"verdict": "approve", "summary": "ok", "issues": []}'
    phase = re.search(r"^# Phase (\S+):", request.messages[0].content, re.MULTILINE).group(1)
    return f"=== FILE: out/{phase}.txt ===\n```text\n{phase}\n```\n"
