"""Plans are validated with pydantic; unknown fields are refused; errors name the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from autopack.errors import PlanError
from autopack.plan import load_plan_file, load_plan_text, parse_plan
from autopack.settings import ROOT

PLAN = ROOT / "examples" / "demo" / "plan.yaml"


def demo_data() -> dict[str, Any]:
    return load_plan_file(PLAN).model_dump(mode="json")


def test_the_demo_plan_loads_from_yaml_and_json() -> None:
    plan = load_plan_file(PLAN)
    assert plan.project == "demo"
    assert [t.id for t in plan.tiers] == ["core", "interface"]
    assert [p.id for _, p in plan.phases()] == ["stats", "parse", "cli"]
    assert parse_plan(load_plan_text(json.dumps(plan.model_dump(mode="json")))) == plan


def _error(data: Any) -> PlanError:
    with pytest.raises(PlanError) as err:
        parse_plan(data)
    return err.value


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda d: d["tiers"][0]["phases"][0].pop("goal"), "tiers.0.phases.0.goal", "field required"),
        (lambda d: d["tiers"][1]["phases"][0].pop("scope"), "tiers.1.phases.0.scope", "field required"),
        (lambda d: d.pop("project"), "project", "field required"),
        (lambda d: d.update(bogus=1), "bogus", "unknown field"),
        (lambda d: d["tiers"][0].update(bogus=1), "tiers.0.bogus", "unknown field"),
        (lambda d: d["tiers"][0]["phases"][1].update(repo_path="/etc"), "tiers.0.phases.1.repo_path", "unknown field"),
        (lambda d: d.update(url="http://example.invalid/repo.git"), "url", "unknown field"),
        (lambda d: d["tiers"][0]["phases"][0].update(complexity="extreme"), "tiers.0.phases.0.complexity", ""),
        (lambda d: d["tiers"][0]["phases"][0].update(scope=[]), "tiers.0.phases.0.scope", ""),
        (lambda d: d["tiers"][0]["phases"][0].update(scope=["/etc/passwd"]), "tiers.0.phases.0.scope", "relative"),
        (lambda d: d["tiers"][0]["phases"][0].update(scope=["src/../../x"]), "tiers.0.phases.0.scope", ".."),
        (lambda d: d["tiers"][0]["phases"][0].update(scope=[".git/hooks/x"]), "tiers.0.phases.0.scope", ".git"),
        (lambda d: d["tiers"][0]["phases"][0].update(deliverables=["C:\\x"]), "tiers.0.phases.0.deliverables", "relative"),
        (lambda d: d["tiers"][0]["phases"][0].update(id="has space"), "tiers.0.phases.0.id", ""),
        (lambda d: d.update(tiers=[]), "tiers", ""),
        (lambda d: d["tiers"][1]["phases"][0].update(id="stats"), "plan", "duplicate phase id"),
    ],
)
def test_invalid_plans_name_the_field(mutate, field: str, message: str) -> None:  # type: ignore[no-untyped-def]
    data = copy.deepcopy(demo_data())
    mutate(data)
    err = _error(data)
    assert err.field == field or (field == "plan" and message in err.message), (err.field, err.message)
    assert message in err.message


def test_non_mapping_and_bad_text() -> None:
    assert _error([1, 2]).field == "plan"
    with pytest.raises(PlanError):
        load_plan_text("tiers: [unclosed")
    with pytest.raises(PlanError):
        load_plan_text("- just\n- a list\n")


def test_a_yaml_date_is_the_text_the_author_wrote() -> None:
    data = load_plan_text("project: demo\nname: 2024-06-01\ntiers: []\nwhen: 2024-06-01 10:00:00\n")
    assert data["name"] == "2024-06-01" and data["when"] == "2024-06-01 10:00:00"
    assert load_plan_text("project: demo\nn: 3\nok: true\n") == {"project": "demo", "n": 3, "ok": True}  # the rest as before


@pytest.mark.parametrize("branch", ["-x", "a..b", "a b", "main~1", "x.lock", "a//b", "m\x00", ""])
def test_a_base_branch_git_would_refuse_is_refused(branch: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan({**_minimal(), "base_branch": branch})
    assert err.value.field == "base_branch"
    assert parse_plan({**_minimal(), "base_branch": "release/1.2"}).base_branch == "release/1.2"


@pytest.mark.parametrize("command", [[], [""], ["  ", "-q"]])
def test_a_test_command_must_name_a_program(command: list[str]) -> None:
    with pytest.raises(PlanError, match="must name a program") as err:
        parse_plan({**_minimal(), "test_command": command})
    assert err.value.field == "test_command"


def _minimal() -> dict[str, Any]:
    return {"project": "demo", "tiers": [{"id": "t", "phases": [{"id": "p", "goal": "g", "category": "c", "scope": ["a"]}]}]}


@pytest.mark.parametrize("phase_id", ["stats.lock", "stats.", "v1..2"])
def test_a_phase_id_git_cannot_put_in_a_ref_is_refused(phase_id: str) -> None:
    data = _minimal()
    data["tiers"][0]["phases"][0]["id"] = phase_id  # it goes into refs/autopack/<run>/<phase>/<n>
    with pytest.raises(PlanError, match="not ending in '.' or '.lock'") as err:
        parse_plan(data)
    assert err.value.field == "tiers.0.phases.0.id"


def test_a_blank_goal_is_refused() -> None:
    data = _minimal()
    data["tiers"][0]["phases"][0]["goal"] = " \n "
    with pytest.raises(PlanError, match="must not be blank") as err:
        parse_plan(data)
    assert err.value.field == "tiers.0.phases.0.goal"


@pytest.mark.parametrize("text", [
    '{"project": "demo", "x": ' + "1" * 5000 + "}",
    "project: demo\nx: " + "1" * 5000 + "\n",
], ids=["json", "yaml"])
def test_a_number_longer_than_python_converts_is_a_plan_error(text: str) -> None:
    with pytest.raises(PlanError, match="4300 digits"):
        load_plan_text(text)


@pytest.mark.parametrize("text", [
    "[" * 50000,  # deeper than the parsers recurse
    "project: demo\nx: " + "[" * 50000,
    '{"project": "demo", "x": ' + "[" * 100 + "]" * 100 + "}",  # parsed, but deeper than any plan field
], ids=["json", "yaml", "parsed"])
def test_deep_nesting_is_a_plan_error(text: str) -> None:
    with pytest.raises(PlanError, match="nested"):
        load_plan_text(text)


def test_a_yaml_alias_inside_its_own_value_is_a_plan_error() -> None:
    # SafeLoader builds a list that contains itself; sending it as JSON died on the circular reference.
    with pytest.raises(PlanError, match="contains itself"):
        load_plan_text("project: demo\nzz: &a [*a]\n")


def test_an_alias_bomb_is_refused() -> None:
    # 600 bytes that stand for 10**9 strings: loading is instant (shared references), but the CLI
    # then wrote it out as JSON to send it.
    lines = ["project: demo", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(PlanError, match="MiB as JSON"):
        load_plan_text("\n".join(lines) + "\n")
    # Aliases as such stay: a shared list, and a merge whose key is overridden.
    data = load_plan_text("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\nl: &l [p]\nm: [*l, *l]\n")
    assert data["x"] == {"a": 3, "b": 2} and data["m"] == [["p"], ["p"]]


@pytest.mark.parametrize("text", [
    '{"project": "demo", "project": "other", "tiers": []}',
    "project: demo\nname: a\nname: b\ntiers: []\n",
], ids=["json", "yaml"])
def test_a_key_given_twice_is_refused(text: str) -> None:
    # The last one used to win silently.
    with pytest.raises(PlanError, match="duplicate key"):
        load_plan_text(text)


@pytest.mark.parametrize("scope", [".", "./", " . ", "./."])
def test_a_scope_that_names_no_path_is_refused(scope: str) -> None:
    # Edited paths are compared normalised: "." matched none, so every edit was refused.
    data = _minimal()
    data["tiers"][0]["phases"][0]["scope"] = [scope]
    with pytest.raises(PlanError, match=r"names no path; use '\*\*' for the whole repository") as err:
        parse_plan(data)
    assert err.value.field == "tiers.0.phases.0.scope"


def test_dot_parts_of_a_path_are_dropped() -> None:
    data = _minimal()
    data["tiers"][0]["phases"][0]["scope"] = ["./calc/stats.py", "calc/./", "docs/."]
    assert parse_plan(data).tiers[0].phases[0].scope == ["calc/stats.py", "calc/", "docs"]


@pytest.mark.parametrize(("field", "limit"), [("project", 64), ("base_branch", 200), ("category", 64)])
def test_names_longer_than_their_database_column_are_refused(field: str, limit: int) -> None:
    data = _minimal()
    where = data["tiers"][0]["phases"][0] if field == "category" else data
    where[field] = "b" * limit
    parse_plan(data)
    where[field] = "b" * (limit + 1)
    with pytest.raises(PlanError, match=f"at most {limit} characters") as err:
        parse_plan(data)
    assert err.value.field.endswith(field)
