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


def lesson_for(failure_class: str, signature: str, paths: Sequence[str]) -> str:
    """A short deterministic lesson from a failure and the paths its fix changed."""
    first = signature.strip().splitlines()[0] if signature.strip() else failure_class
    where = ", ".join(sorted(paths)) or "the phase's files"
    if failure_class in ("test_failure", "regression"):
        return f"Tests failed with `{first[:200]}` until the fix changed {where}: handle that case from the first attempt."
    return f"Attempts failed with {failure_class} (`{first[:200]}`) until the fix changed {where}: avoid it from the first attempt."


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard, cut back to a directory boundary when the
    wildcard is inside a name ("src/api/**" -> "src/api/", "src/a*.py" -> "src/")."""
    for i, ch in enumerate(pattern):
        if ch in _WILD:
            return pattern[: pattern.rfind("/", 0, i) + 1]
    return pattern


def scopes_overlap(a: str, b: str) -> bool:
    """Whether two scope globs can name a common path (by their literal prefixes)."""
    pa, pb = literal_prefix(a), literal_prefix(b)
    if pa == a and pb == b:  # two plain paths
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")
    if pa == a:  # a is a plain path, b a glob
        return a.startswith(pb) or pb == ""
    if pb == b:
        return b.startswith(pa) or pa == ""
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
    if effect.get("carried_phases", 0) >= min_carried and carried is not None and other is not None and carried >= other and carried > 0:
        return f"its failure still happens when carried ({carried:.0%} of {effect['carried_phases']} phases vs {other:.0%} without)"
    if now - (last_matched_at or created_at) > stale_after:
        return f"matched no phase for {stale_after.days} days"
    return None
