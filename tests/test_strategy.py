"""Compiling a plan into a strategy is pure; the high-risk categories get strict CI, 2 attempts and
a mandatory audit whatever the file says."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from autopack.config import load_config
from autopack.errors import ConfigError, PlanError
from autopack.plan import load_plan_file, parse_plan
from autopack.settings import ROOT
from autopack.strategy import RunBudget, StrategyConfig, compile_strategy, load_strategy_config

HIGH_RISK = ["cross_cutting_refactor", "index_registry_change", "schema_contract_change", "bulk_multi_file_operation", "security_auth_change"]
CONFIG = ROOT / "config"


def _plan(categories: list[str]):  # type: ignore[no-untyped-def]
    return parse_plan({"project": "p", "tiers": [{"id": "t", "phases": [
        {"id": f"p{i}", "goal": "g", "category": c, "scope": ["src/**"]} for i, c in enumerate(categories)]}]})


def test_compile_is_pure_and_deterministic() -> None:
    cfg = load_strategy_config(CONFIG / "strategy.yaml")
    plan = load_plan_file(ROOT / "examples" / "demo" / "plan.yaml")
    before_plan, before_cfg = copy.deepcopy(plan.model_dump()), copy.deepcopy(cfg.model_dump())
    a, b = compile_strategy(plan, cfg), compile_strategy(plan, cfg)
    assert a == b
    assert plan.model_dump() == before_plan and cfg.model_dump() == before_cfg
    assert [p.phase_id for p in a.phases] == ["stats", "parse", "cli"]
    assert a.for_phase("parse").tier_id == "core"


@pytest.mark.parametrize("category", HIGH_RISK)
def test_high_risk_floor_holds_even_against_a_loose_config(category: str) -> None:
    loose = StrategyConfig.model_validate({
        "defaults": {"max_attempts": 5, "ci_profile": "normal", "audit": "off"},
        "high_risk_categories": HIGH_RISK,
        "high_risk": {"max_attempts": 9, "ci_profile": "normal", "audit": "advisory"},
        "categories": {category: {"max_attempts": 7, "audit": "off"}},
    })
    for cfg in (loose, load_strategy_config(CONFIG / "strategy.yaml")):
        ph = compile_strategy(_plan([category]), cfg).phases[0]
        assert (ph.ci_profile, ph.max_attempts, ph.audit, ph.high_risk, ph.dual_audit) == ("strict", 2, "required", True, True)


def test_category_overrides_merge_over_defaults() -> None:
    cfg = StrategyConfig.model_validate({"defaults": {"max_attempts": 3, "token_cap": 1000, "audit": "advisory"},
                                         "categories": {"docs": {"token_cap": 50}}})
    docs, other = compile_strategy(_plan(["docs", "unheard_of"]), cfg).phases
    assert (docs.token_cap, docs.max_attempts, docs.audit, docs.high_risk) == (50, 3, "advisory", False)
    assert (other.token_cap, other.max_attempts) == (1000, 3)


def test_too_many_phases_is_a_plan_error() -> None:
    cfg = StrategyConfig.model_validate({"run": {"max_phases": 2}})
    with pytest.raises(PlanError) as err:
        compile_strategy(_plan(["a", "b", "c"]), cfg)
    assert err.value.field == "tiers"


def test_the_compiled_strategy_carries_the_flakiness_settings_the_gate_reads() -> None:
    cfg = StrategyConfig.model_validate({"flakiness": {"quarantine_reruns": 0}})
    compiled = compile_strategy(_plan(["feature"]), cfg)
    assert compiled.model_dump(mode="json")["flakiness"]["quarantine_reruns"] == 0
    # A snapshot stored before it carried them still loads (with the defaults).
    old = {k: v for k, v in compiled.model_dump(mode="json").items() if k != "flakiness"}
    assert type(compiled).model_validate(old).flakiness.quarantine_reruns == 2


def test_plan_test_command_overrides_the_default() -> None:
    cfg = load_strategy_config(CONFIG / "strategy.yaml")
    plan = _plan(["feature"]).model_copy(update={"test_command": ["make", "test"]})
    assert compile_strategy(plan, cfg).test_command == ["make", "test"]
    assert "--continue-on-collection-errors" in compile_strategy(_plan(["feature"]), cfg).test_command


def test_bad_configs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_strategy_config(tmp_path / "missing.yaml")
    (tmp_path / "strategy.yaml").write_text("defaults: {max_attempts: 0}\nbogus: 1\n")
    with pytest.raises(ConfigError):
        load_strategy_config(tmp_path / "strategy.yaml")
    (tmp_path / "strategy.yaml").write_text("defaults: {ci_profile: sloppy}\n")  # found at load, not at compile
    with pytest.raises(ConfigError, match="defaults.ci_profile"):
        load_strategy_config(tmp_path / "strategy.yaml")


def test_load_config_checks_models_and_providers(tmp_path: Path) -> None:
    cfg = load_config(CONFIG)
    assert cfg.models.provider_of(cfg.models.roles["builder"].low) in cfg.models.providers
    assert cfg.pricing.cost("claude-haiku-4-5", 1_000_000, 0) == cfg.pricing.models["claude-haiku-4-5"].input
    assert cfg.pricing.price("unknown-model") == cfg.pricing.default
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (tmp_path / name).write_text((CONFIG / name).read_text())
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["models"]["claude-haiku-4-5"]["provider"] = "nowhere"
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    with pytest.raises(ConfigError, match="nowhere"):
        load_config(tmp_path)
    (tmp_path / "pricing.yaml").unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


@pytest.mark.parametrize("where", ["roles", "doctor"])
def test_every_model_the_config_can_call_needs_a_stated_price(tmp_path: Path, where: str) -> None:
    """The default price is a guess, not a bound (some models cost more): a model without a price
    of its own would make a budget's worst case wrong."""
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (tmp_path / name).write_text((CONFIG / name).read_text())
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["models"]["claude-opus-5-5"] = {"provider": "anthropic"}
    if where == "roles":
        models["roles"]["builder"]["high"] = "claude-opus-5-5"
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    if where == "doctor":
        strategy = yaml.safe_load((CONFIG / "strategy.yaml").read_text())
        strategy["run"]["doctor"]["strong_model"] = "claude-opus-5-5"
        (tmp_path / "strategy.yaml").write_text(yaml.safe_dump(strategy))
    with pytest.raises(ConfigError, match="no price in pricing.yaml for claude-opus-5-5"):
        load_config(tmp_path)
    pricing = yaml.safe_load((CONFIG / "pricing.yaml").read_text())
    pricing["models"]["claude-opus-5-5"] = {"input": 4.0, "output": 20.0}
    (tmp_path / "pricing.yaml").write_text(yaml.safe_dump(pricing))
    assert load_config(tmp_path).pricing.price("claude-opus-5-5").output == 20.0


def _edited_config(tmp_path: Path, models: dict[str, Any] | None = None, strategy: dict[str, Any] | None = None,
                   pricing: dict[str, Any] | None = None) -> Path:
    """A copy of the shipped config in ``tmp_path``, with the given files replaced."""
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (tmp_path / name).write_text((CONFIG / name).read_text())
    for name, data in (("models.yaml", models), ("strategy.yaml", strategy), ("pricing.yaml", pricing)):
        if data is not None:
            (tmp_path / name).write_text(yaml.safe_dump(data))
    return tmp_path


def test_temperature_is_true_or_false_not_a_number(tmp_path: Path) -> None:
    """``temperature: 0`` means "temperature 0" to the operator; pydantic's lax mode would read it as
    false (send none)."""
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["models"]["gpt-5.4-mini"]["temperature"] = 0
    with pytest.raises(ConfigError, match=r"models\.yaml: models\.gpt-5\.4-mini\.temperature: Input should be a valid boolean"):
        load_config(_edited_config(tmp_path, models=models))
    models["models"]["gpt-5.4-mini"]["temperature"] = False
    assert load_config(_edited_config(tmp_path, models=models)).models.models["gpt-5.4-mini"].temperature is False


@pytest.mark.parametrize("drop", ["builder", "auditor", "second_auditor", "judge"])
def test_a_role_the_engine_calls_is_required(tmp_path: Path, drop: str) -> None:
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["roles"].pop(drop)
    with pytest.raises(ConfigError, match=f"roles: {drop} missing"):
        load_config(_edited_config(tmp_path, models=models))


@pytest.mark.parametrize("where", ["doctor.model", "doctor.strong_model", "lesson_model", "narrative_model"])
def test_a_strategy_model_must_be_listed_in_models_yaml(tmp_path: Path, where: str) -> None:
    """A typo (claude-haiku-4.5) with a price but no models.yaml entry would fail mid-run."""
    pricing = yaml.safe_load((CONFIG / "pricing.yaml").read_text())
    pricing["models"]["claude-haiku-4.5"] = {"input": 1.0, "output": 5.0}
    strategy = yaml.safe_load((CONFIG / "strategy.yaml").read_text())
    if where.startswith("doctor."):
        strategy["run"]["doctor"][where.split(".")[1]] = "claude-haiku-4.5"
    else:
        strategy["learning"][where] = "claude-haiku-4.5"
    with pytest.raises(ConfigError, match=r"claude-haiku-4\.5' is not listed in models.yaml"):
        load_config(_edited_config(tmp_path, strategy=strategy, pricing=pricing))


def _strategy_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "strategy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("data", "where"), [
    ({"categories": {"feature": {"max_attemps": 5}}}, "categories.feature.max_attemps: unknown field"),
    ({"defaults": {"max_attemps": 5}}, "defaults.max_attemps: unknown field"),
    ({"high_risk": {"max_attemps": 5}}, "high_risk.max_attemps: unknown field"),  # even with no high-risk category
    ({"high_risk_categories": ["schema"], "high_risk": {"max_attempts": "two"}}, "high_risk.max_attempts"),
])
def test_a_bad_category_budget_is_refused_at_load(tmp_path: Path, data: dict[str, Any], where: str) -> None:
    # It was found only when a plan used the category: an HTTP 500 (or a ValueError) at submission.
    with pytest.raises(ConfigError, match=where):
        load_strategy_config(_strategy_file(tmp_path, data))


@pytest.mark.parametrize("key", ["max_attempts", "token_cap", "edit_fix_rounds"])
def test_a_boolean_is_not_a_number(tmp_path: Path, key: str) -> None:
    # `max_attempts: yes` (YAML 1.1: true) silently became 1.
    with pytest.raises(ConfigError, match=f"defaults.{key}: Input should be a valid integer"):
        load_strategy_config(_strategy_file(tmp_path, {"defaults": {key: True}}))
    with pytest.raises(ConfigError, match="run.max_phases: Input should be a valid integer"):
        load_strategy_config(_strategy_file(tmp_path, {"run": {"max_phases": True}}))
    assert load_strategy_config(_strategy_file(tmp_path, {"defaults": {"cost_cap_usd": 2}})).defaults == {"cost_cap_usd": 2}


@pytest.mark.parametrize("command", [[], [""], [" ", "-q"]])
def test_the_default_test_command_must_name_a_program(command: list[str]) -> None:
    # The plan refused test_command: [], the strategy's default did not: the sandbox then ran
    # ["--junitxml", ...] as a program.
    with pytest.raises(ValidationError, match="must name a program"):
        RunBudget(test_command=command)


def _config_copy(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (d / name).write_bytes((ROOT / "config" / name).read_bytes())
    return d


@pytest.mark.parametrize("name", ["models.yaml", "pricing.yaml", "strategy.yaml"])
def test_config_not_utf8_is_a_config_error(tmp_path: Path, name: str) -> None:
    d = _config_copy(tmp_path)
    (d / name).write_bytes((d / name).read_bytes() + b"\n# caf\xe9\n")
    with pytest.raises(ConfigError):
        load_config(d)


def test_pricing_error_names_its_file(tmp_path: Path) -> None:
    d = _config_copy(tmp_path)
    (d / "pricing.yaml").write_text("models: {}\n", encoding="utf-8")  # `default:` missing
    with pytest.raises(ConfigError) as exc:
        load_config(d)
    assert "pricing.yaml" in str(exc.value)
