"""Learned rules, the pure part: lessons, scope generalisation and overlap, selection for a prompt
under a token cap, measured effect and retirement. Plain functions on plain data."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from autopack.engine.ledger import estimate_tokens

_WILD = set("*?[")


# With no phase of its scope left to compare (every one carries it), a rule whose failure still
# happens in at least this share of the phases that carried it is not working.
NO_CONTROL_RETIRE_RATE = 0.5
QUOTE_CHARS = 160  # of a failure's first line quoted in a lesson
WHERE_PATHS = 8  # fixed paths named in a lesson


def quoted(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` as one quoted line of at most ``limit`` characters with no quote, backtick or
    control character of its own: output recorded from a test run (which the code under test
    wrote) goes into later prompts as data, never as text that ends the quote and reads as an
    instruction."""
    flat = " ".join("".join(" " if (c in "\"`" or not c.isprintable()) else c for c in text).split())
    return '"' + (flat[: limit - 1] + "…" if len(flat) > limit else flat) + '"'


def lesson_for(failure_class: str, signature: str, paths: Sequence[str]) -> str:
    """A short deterministic lesson from a failure and the paths its fix changed."""
    first = signature.strip().splitlines()[0] if signature.strip() else failure_class
    fixed = sorted(paths)
    where = ", ".join(fixed[:WHERE_PATHS]) + (f" and {len(fixed) - WHERE_PATHS} more" if len(fixed) > WHERE_PATHS else "")
    where = where or "the phase's files"
    if failure_class in ("test_failure", "regression"):
        return f"Tests failed with the output {quoted(first)} until the fix changed {where}: handle that case from the first attempt."
    return f"Attempts failed with {failure_class} (output {quoted(first)}) until the fix changed {where}: avoid it from the first attempt."


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard, cut back to a directory boundary when the
    wildcard is inside a name ("src/api/**" -> "src/api/", "src/a*.py" -> "src/")."""
    for i, ch in enumerate(pattern):
        if ch in _WILD:
            return pattern[: pattern.rfind("/", 0, i) + 1]
    return pattern


def _plain_meets_glob(path: str, prefix: str) -> bool:
    """Whether a plain scope entry (a file, or a folder and everything in it, as plan scopes mean
    it) can name a path a glob with literal prefix ``prefix`` names."""
    folder = path.rstrip("/") + "/"
    return prefix == "" or path.startswith(prefix) or folder.startswith(prefix) or prefix.startswith(folder)


def scopes_overlap(a: str, b: str) -> bool:
    """Whether two scope globs can name a common path (by their literal prefixes)."""
    pa, pb = literal_prefix(a), literal_prefix(b)
    if pa == a and pb == b:  # two plain paths
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")
    if pa == a:  # a is a plain path, b a glob
        return _plain_meets_glob(a, pb)
    if pb == b:
        return _plain_meets_glob(b, pa)
    return pa.startswith(pb) or pb.startswith(pa)


def generalize_scope(paths: Sequence[str]) -> str:
    """One glob covering all ``paths``: the file itself, or their common directory + ``/**``."""
    clean = sorted({p.rstrip("/") for p in paths if p})
    if not clean:
        return "**"
    if len(clean) == 1 and literal_prefix(clean[0]) == clean[0] and not clean[0].endswith("**"):
        return clean[0]
    dirs = [literal_prefix(p).rstrip("/") if literal_prefix(p) != p else posixpath.dirname(p) for p in clean]
    common = posixpath.commonpath(dirs) if all(dirs) else ""
    return f"{common}/**" if common else "**"


@dataclass(frozen=True)
class RuleView:
    id: int
    text: str
    scope_pattern: str
    category: str | None
    evidence: int
    status: str = "active"


@dataclass(frozen=True)
class Selection:
    rules: tuple[RuleView, ...]
    text: str
    tokens: int


def select_rules(rules: Sequence[RuleView], phase_scope: Sequence[str], category: str, token_cap: int) -> Selection:
    """Active rules whose scope overlaps the phase's and whose category matches (or is generic),
    most evidence first, rendered one per line while they fit under ``token_cap``."""
    eligible = [r for r in rules if r.status == "active" and (r.category in (None, category))
                and any(scopes_overlap(r.scope_pattern, s) for s in phase_scope)]
    eligible.sort(key=lambda r: (-r.evidence, r.id))
    chosen: list[RuleView] = []
    lines: list[str] = []
    for r in eligible:
        line = f"- (learned rule, scope {r.scope_pattern}) {r.text}"
        if estimate_tokens("\n".join([*lines, line])) > token_cap:
            continue
        chosen.append(r)
        lines.append(line)
    text = "\n".join(lines)
    return Selection(tuple(chosen), text, estimate_tokens(text) if text else 0)


def measure_effect(carried: Sequence[bool], not_carried: Sequence[bool]) -> dict[str, Any]:
    """How often the rule's failure key occurred in phases that carried the rule and in phases that
    did not (each entry: did the key occur in that phase)."""
    def rate(xs: Sequence[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {"carried_phases": len(carried), "carried_failures": sum(carried), "carried_rate": rate(carried),
            "other_phases": len(not_carried), "other_failures": sum(not_carried), "other_rate": rate(not_carried)}


def retire_reason(effect: dict[str, Any], last_matched_at: datetime | None, created_at: datetime, now: datetime,
                  *, stale_after: timedelta, min_carried: int) -> str | None:
    """Why a rule should retire, or None: its key keeps failing when carried, or it has not matched
    any phase for ``stale_after``."""
    carried, other = effect.get("carried_rate"), effect.get("other_rate")
    enough = effect.get("carried_phases", 0) >= min_carried and carried is not None
    if enough and other is not None and carried >= other and carried > 0:  # type: ignore[operator]
        return f"its failure still happens when carried ({carried:.0%} of {effect['carried_phases']} phases vs {other:.0%} without)"
    if enough and other is None and carried >= NO_CONTROL_RETIRE_RATE:  # type: ignore[operator]
        return (f"its failure still happens in {carried:.0%} of the {effect['carried_phases']} phases that carried it "
                f"(no phase of its scope went without it to compare)")
    if now - (last_matched_at or created_at) > stale_after:
        return f"matched no phase for {stale_after.days} days"
    return None
