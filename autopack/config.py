"""Operator configuration from ``config/``: models, pricing, strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from autopack.errors import ConfigError
from autopack.strategy import StrategyConfig, load_strategy_config, problems

M = TypeVar("M", bound=BaseModel)

Role = Literal["builder", "auditor"]
# The roles the engine asks models.yaml for: the Builder (and the planner, its high model), the
# Auditor, and for high-risk categories the second auditor and the judge.
REQUIRED_ROLES = ("builder", "auditor", "second_auditor", "judge")


class QuotaConfig(BaseModel):
    """One rolling window of a provider's quota: at most ``limit`` tokens or requests per period."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tokens", "requests"]
    period: Literal["hour", "day", "week"]
    limit: int = Field(gt=0)


class ProviderConfig(BaseModel):
    """One provider. ``timeout_s`` bounds each request (a slow local server, or long answers, may
    need more than the default); ``max_retries`` is how many times the adapter retries what cannot
    bill twice (429, 5xx, a connection never made)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["anthropic", "openai", "openai_compatible"]
    api_key_env: str | None = None
    base_url: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    quotas: list[QuotaConfig] = Field(default_factory=list)


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ModelEntry(BaseModel):
    """One model: its provider and what its API accepts.

    ``reasoning_effort`` is sent to OpenAI-kind reasoning models (the GPT-5 family, the o-series),
    which otherwise reason at their own default effort: thinking tokens count against the answer's
    ``max_tokens``, so a model that reasons at length can spend the cap before it answers.
    ``temperature: false`` is for models that refuse any temperature but their own default (the
    request is then sent without one). It is strictly true or false: a number (``temperature: 0``)
    is refused, not taken for false."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    reasoning_effort: ReasoningEffort | None = None
    temperature: StrictBool = True


class RoleModels(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: str
    medium: str
    high: str
    fallback: list[str] = Field(default_factory=list)
    # Per complexity, the models that follow the level's own after repeated failures of one kind
    # (strategy.yaml run.model_after_failures); a level not listed keeps its model.
    escalation: dict[Literal["low", "medium", "high"], list[str]] = Field(default_factory=dict)

    def for_complexity(self, complexity: str) -> str:
        return {"low": self.low, "medium": self.medium, "high": self.high}[complexity]

    def escalation_chain(self, complexity: str, first: str | None = None) -> list[str]:
        """The level's model (or ``first``), then its escalation models, without repeats."""
        return list(dict.fromkeys([first or self.for_complexity(complexity), *self.escalation.get(complexity, [])]))  # type: ignore[call-overload]


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderConfig]
    models: dict[str, ModelEntry]
    roles: dict[str, RoleModels]

    def provider_of(self, model: str) -> str:
        try:
            return self.models[model].provider
        except KeyError:
            raise ConfigError(f"model {model!r} is not listed in models.yaml") from None


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class PricingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Price
    models: dict[str, Price] = Field(default_factory=dict)

    def price(self, model: str) -> Price:
        return self.models.get(model, self.default)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        p = self.price(model)
        return (input_tokens * p.input + output_tokens * p.output) / 1_000_000


class AppConfig(BaseModel):
    models: ModelsConfig
    pricing: PricingConfig
    strategy: StrategyConfig


def _load_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _validated(model: type[M], path: Path) -> M:
    """``path``'s YAML validated as ``model``; a ``ConfigError`` naming the file and the fields."""
    try:
        return model.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {problems(exc)}") from None


def load_config(config_dir: Path) -> AppConfig:
    models = _validated(ModelsConfig, config_dir / "models.yaml")
    pricing = _validated(PricingConfig, config_dir / "pricing.yaml")
    for name, entry in models.models.items():
        if entry.provider not in models.providers:
            raise ConfigError(f"model {name!r} names unknown provider {entry.provider!r}")
        if entry.reasoning_effort is not None and models.providers[entry.provider].kind == "anthropic":
            raise ConfigError(f"model {name!r}: reasoning_effort is an OpenAI-kind setting; provider "
                              f"{entry.provider!r} is of kind anthropic")
    missing_roles = [r for r in REQUIRED_ROLES if r not in models.roles]
    if missing_roles:
        raise ConfigError(f"models.yaml: roles: {', '.join(missing_roles)} missing (the engine calls "
                          f"{', '.join(REQUIRED_ROLES)})")
    for role in models.roles.values():
        for m in [role.low, role.medium, role.high, *role.fallback, *(x for chain in role.escalation.values() for x in chain)]:
            prov = models.provider_of(m)
            if prov not in models.providers:
                raise ConfigError(f"model {m!r} names unknown provider {prov!r}")
    strategy = load_strategy_config(config_dir / "strategy.yaml")
    for where, m in (("run.doctor.model", strategy.run.doctor.model), ("run.doctor.strong_model", strategy.run.doctor.strong_model),
                     ("learning.lesson_model", strategy.learning.lesson_model),
                     ("learning.narrative_model", strategy.learning.narrative_model)):
        if m and m not in models.models:
            raise ConfigError(f"strategy.yaml {where}: model {m!r} is not listed in models.yaml")
    used = {*models.models, *(m for role in models.roles.values() for m in [role.low, role.medium, role.high, *role.fallback,
                                                                            *(x for chain in role.escalation.values() for x in chain)]),
            *(m for m in (strategy.run.doctor.model, strategy.run.doctor.strong_model, strategy.learning.lesson_model,
                          strategy.learning.narrative_model) if m)}
    unpriced = sorted(used - set(pricing.models))
    if unpriced:
        # The default price is only a guess (some models cost more): a budget's worst case is only a
        # bound for a model whose price the operator stated.
        raise ConfigError(f"no price in pricing.yaml for {', '.join(unpriced)}: add each under models: "
                          f"with its input and output USD per million tokens ({{input: 0, output: 0}} for a free local model)")
    return AppConfig(models=models, pricing=pricing, strategy=strategy)
