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
