"""Normalised error messages and failure keys, stable across runs and machines. Pure.

Paths, numbers, hex ids, UUIDs, timestamps, durations and memory addresses are replaced by
placeholders, so two failures of the same kind compare equal whatever run, file or time they
happened in.
"""

from __future__ import annotations

import difflib
import hashlib
import re

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b"), "<ts>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<addr>"),
    (re.compile(r"\b[0-9a-f]{7,64}\b"), "<hex>"),
    (re.compile(r"(?:(?<=\s)|^|(?<=[\"'(=]))(?:/[\w.@+-]+)+/?"), "<path>"),
    (re.compile(r"\b\d+(?:\.\d+)?(?:ms|s)\b"), "<t>"),
    (re.compile(r"\b\d+(?:\.\d+)?\b"), "<n>"),
    (re.compile(r"[ \t]+"), " "),
)


def strip_volatile(text: str, limit: int = 2000) -> str:
    """``text`` with only what differs between runs of the same thing replaced (timestamps, UUIDs,
    addresses, hex ids) and blanks folded; numbers and paths stay, as they tell things apart."""
    out = text[:limit * 2]
    for pattern, repl in _RULES[:4]:
        out = pattern.sub(repl, out)
    return " ".join(out.split())[:limit]


def normalize_error(text: str, limit: int = 2000) -> str:
    """``text`` with run-specific details replaced by placeholders, whitespace folded, lines trimmed."""
    out = text[:limit * 2]
    for pattern, repl in _RULES:
        out = pattern.sub(repl, out)
    lines = [line.strip() for line in out.splitlines()]
    return "\n".join(line for line in lines if line)[:limit]


def failure_key(failure_class: str, message: str) -> str:
    """A stable key: the failure class plus a short hash of the normalised message's first lines."""
    head = "\n".join(normalize_error(message).splitlines()[:3])
    digest = hashlib.sha256(head.encode()).hexdigest()[:12]
    return f"{failure_class}:{digest}"


def similarity(a: str, b: str) -> float:
    """How alike two messages are once normalised, from 0.0 to 1.0. Two empty messages say nothing
    about the failures they stand for: 0.0, not alike."""
    na, nb = normalize_error(a), normalize_error(b)
    if not na or not nb:
        return 0.0
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()
