"""Learned rules, pure: scope overlap and generalisation, selection under a token cap, effect,
retirement, lessons."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from autopack.engine.ledger import estimate_tokens
from autopack.rules import RuleView, generalize_scope, lesson_for, literal_prefix, measure_effect, retire_reason, scopes_overlap, select_rules


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ("src/api/**", "docs/**", False),
    ("src/api/**", "src/api/x.py", True),
    ("src/**", "src/api/x.py", True),
    ("src/api/**", "src/**", True),
    ("src/api/**", "src/apidocs/x.py", False),
    ("calc/stats.py", "calc/stats.py", True),
    ("calc/stats.py", "calc/parse.py", False),
    ("calc/**", "calc/parse.py", True),
    ("**", "anything/at/all.py", True),
    ("docs/*.md", "docs/guide.md", True),
    ("docs/*.md", "src/x.py", False),
    ("README.md", "docs/**", False),
])
def test_scope_overlap(a: str, b: str, overlap: bool) -> None:
    assert scopes_overlap(a, b) is overlap
    assert scopes_overlap(b, a) is overlap


def test_literal_prefix_and_generalisation() -> None:
    assert literal_prefix("src/api/**") == "src/api/"
    assert literal_prefix("src/a*.py") == "src/"
    assert literal_prefix("README.md") == "README.md"
    assert generalize_scope(["calc/stats.py"]) == "calc/stats.py"
    assert generalize_scope(["calc/stats.py", "calc/parse.py"]) == "calc/**"
    assert generalize_scope(["src/api/a.py", "src/db/b.py"]) == "src/**"
    assert generalize_scope(["src/a.py", "docs/b.md"]) == "**"
    assert generalize_scope(["src/api/**", "src/api/v2/x.py"]) == "src/api/**"


def _rules() -> list[RuleView]:
    return [
        RuleView(1, "API handlers validate input before use.", "src/api/**", None, 2),
        RuleView(2, "Docs link to the changelog.", "docs/**", None, 5),
        RuleView(3, "Feature code raises ValueError on bad input.", "src/**", "feature", 3),
        RuleView(4, "Retired advice.", "src/**", None, 9, status="retired"),
        RuleView(5, "Parsing rule.", "src/**", "parsing", 1),
    ]


def test_selection_by_scope_category_and_status() -> None:
    sel = select_rules(_rules(), ["src/api/users.py"], "feature", 10_000)
    assert [r.id for r in sel.rules] == [3, 1]  # most evidence first; docs, retired and other-category rules left out
    assert "src/api/**" in sel.text and "Docs" not in sel.text and "Retired" not in sel.text
    assert select_rules(_rules(), ["docs/**"], "docs", 10_000).rules[0].id == 2
    assert [r.id for r in select_rules(_rules(), ["docs/**"], "docs", 10_000).rules] == [2]


def test_selection_stays_under_the_token_cap() -> None:
    many = [RuleView(i, f"Rule number {i} says something moderately long about the code base.", "src/**", None, 100 - i) for i in range(50)]
    for cap in (0, 20, 45, 100, 300):
        sel = select_rules(many, ["src/x.py"], "feature", cap)
        assert sel.tokens <= cap
        assert sel.tokens == (estimate_tokens(sel.text) if sel.text else 0)
    assert select_rules(many, ["src/x.py"], "feature", 300) == select_rules(list(reversed(many)), ["src/x.py"], "feature", 300)


def test_effect_and_retirement() -> None:
    now = datetime(2026, 11, 28, tzinfo=timezone.utc)
    helping = measure_effect([False, False, False, False], [True, True, False])
    assert helping == {"carried_phases": 4, "carried_failures": 0, "carried_rate": 0.0, "other_phases": 3, "other_failures": 2, "other_rate": 0.6667}
    assert retire_reason(helping, now, now - timedelta(days=1), now, stale_after=timedelta(days=30), min_carried=3) is None
    failing = measure_effect([True, True, False], [True, False])
    assert "still happens when carried" in retire_reason(failing, now, now, now, stale_after=timedelta(days=30), min_carried=3)
    assert retire_reason(failing, now, now, now, stale_after=timedelta(days=30), min_carried=4) is None
    stale = measure_effect([], [])
    assert "matched no phase" in retire_reason(stale, None, now - timedelta(days=31), now, stale_after=timedelta(days=30), min_carried=3)


def test_lessons_are_deterministic_and_name_the_fix() -> None:
    a = lesson_for("test_failure", "Failed: DID NOT RAISE ValueError", ["calc/b.py", "calc/a.py"])
    assert a == lesson_for("test_failure", "Failed: DID NOT RAISE ValueError", ["calc/a.py", "calc/b.py"])
    assert "DID NOT RAISE" in a and "calc/a.py, calc/b.py" in a
    assert "edit_refused" in lesson_for("edit_refused", "README.md: outside scope", ["calc/x.py"])
