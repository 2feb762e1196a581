"""Compile a plan into a strategy: per-phase budgets from ``config/strategy.yaml``. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autopack.errors import ConfigError, PlanError
from autopack.flakiness import FlakinessConfig
from autopack.plan import Plan, command_problem, error_field

# Strict: numbers must be numbers in the file (``max_attempts: yes`` is YAML's true, not 1; ``"3"`` a
# string). A float field still takes an integer (``cost_cap_usd: 2``).
_STRICT = ConfigDict(extra="forbid", strict=True)


class CategoryBudget(BaseModel):
    model_config = _STRICT

    max_attempts: int = Field(3, ge=1, le=20)
    token_cap: int = Field(60000, gt=0)
    cost_cap_usd: float = Field(2.0, gt=0)
    ci_profile: Literal["normal", "strict"] = "normal"
    audit: Literal["required", "advisory", "off"] = "advisory"
    dual_audit: bool = False  # two auditors from two providers, a judge when they disagree
    builder_max_tokens: int = Field(4096, gt=0)
    edit_fix_rounds: int = Field(2, ge=0, le=5)


class DoctorConfig(BaseModel):
    """The Doctor: a cheap model decides what a repeated failure needs; below the confidence
    threshold the strong model is asked. ``model: null`` leaves the decision to the rules alone."""

    model_config = _STRICT

    model: str | None = None
    strong_model: str | None = None
    escalate_below_confidence: float = Field(0.7, ge=0, le=1)
    max_calls_per_phase: int = Field(2, ge=0)
    max_calls_per_run: int = Field(10, ge=0)
    max_tokens: int = Field(600, gt=0)


class RoutingConfig(BaseModel):
    """Routing past providers near a quota or recently out, and the backoff between fallbacks."""

    model_config = _STRICT

    quota_margin: float = Field(0.9, gt=0, le=1)  # a provider at this share of a quota window is skipped
    outage_cooldown_s: float = Field(60.0, ge=0)  # a provider whose last call was an outage is skipped this long
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_cap_s: float = Field(30.0, gt=0)


class RunBudget(BaseModel):
    model_config = _STRICT

    token_cap: int = Field(500000, gt=0)
    cost_cap_usd: float = Field(10.0, gt=0)
    max_phases: int = Field(50, gt=0)
    test_command: list[str] = Field(default_factory=lambda: ["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"])
    test_timeout_s: int = Field(300, gt=0)
    # A test run's memory in all (its processes and its /tmp), where the sandbox has a cgroup per run.
    test_memory_mb: int = Field(4096, gt=0)
    max_runtime_s: int = Field(6 * 3600, gt=0)
    # Health budget: past any of these the run ends DONE_FAILED_HEALTH_BUDGET with the counts.
    max_provider_errors: int = Field(6, ge=1)
    max_edit_failures: int = Field(12, ge=1)
    max_total_failures: int = Field(20, ge=1)
    # Caps on one project's spend per UTC day, across all its runs.
    project_daily_token_cap: int = Field(5_000_000, gt=0)
    project_daily_cost_cap_usd: float = Field(50.0, gt=0)
    # A tier ending with more open major issues than this is NOT_CLEAN; then continue or stop.
    tier_major_issue_threshold: int = Field(2, ge=0)
    on_not_clean: Literal["continue", "stop"] = "continue"
    # Re-planning: after two consecutive failures of a phase this alike, a model rewrites its goal once.
    replan_similarity: float = Field(0.85, ge=0, le=1)
    max_replans: int = Field(1, ge=0)
    # Escalation: every this many failed attempts of a phase move it up a complexity level (and to
    # that level's model in models.yaml); 0 turns escalation off.
    escalate_after_failures: int = Field(2, ge=0)
    # Within a level: after this many consecutive failures of one kind, the next attempt takes the
    # next model of the level's escalation chain (models.yaml roles.<role>.escalation); 0: never.
    model_after_failures: int = Field(2, ge=0)
    doctor: DoctorConfig = Field(default_factory=DoctorConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @field_validator("test_command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        # The plan's rule: [] would make the sandbox run the first of the options it adds as a program.
        problem = command_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class LearningConfig(BaseModel):
    model_config = _STRICT

    promotion_threshold: int = Field(2, ge=1)  # occurrences of a failure key in a project before a rule
    rules_token_cap: int = Field(600, gt=0)  # rules and hints in one prompt stay under this
    stale_after_days: int = Field(30, gt=0)  # a rule that matched nothing this long retires
    min_carried: int = Field(3, ge=1)  # carried phases before a rule's effect can retire it
    # Models (names from models.yaml) that write a hint's lesson and a postmortem's narrative; with
    # none, lessons are built from the failure and the fix, and postmortems carry the facts alone.
    lesson_model: str | None = None
    narrative_model: str | None = None


class StrategyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning: LearningConfig = Field(default_factory=LearningConfig)
    flakiness: FlakinessConfig = Field(default_factory=FlakinessConfig)

    # Partial CategoryBudgets, merged by budget_for; every merge a phase can get is checked at load.
    defaults: dict[str, Any] = Field(default_factory=dict)
    high_risk_categories: list[str] = Field(default_factory=list)
    high_risk: dict[str, Any] = Field(default_factory=dict)
    categories: dict[str, dict[str, Any]] = Field(default_factory=dict)
    run: RunBudget = Field(default_factory=RunBudget)

    @model_validator(mode="after")
    def _budgets(self) -> "StrategyConfig":
        # A typo (max_attemps) or a wrong value in a category is found when the file is loaded, not as
        # an error at the submission of the first plan that uses the category.
        try:
            _merge([("defaults", self.defaults)])
            _merge([("defaults", self.defaults), ("high_risk", self.high_risk)])
            for category in [*self.categories, *self.high_risk_categories]:
                budget_for(category, self)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class PhaseStrategy(CategoryBudget):
    phase_id: str
    tier_id: str
    category: str
    complexity: str
    high_risk: bool


class CompiledStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str
    run: RunBudget
    test_command: list[str]
    phases: list[PhaseStrategy]
    # The gate reads quarantine_reruns from here, so a run keeps the settings it started with; the
    # project's records are folded and aged with the live config (they outlive any one run).
    flakiness: FlakinessConfig = Field(default_factory=FlakinessConfig)

    def for_phase(self, phase_id: str) -> PhaseStrategy:
        for p in self.phases:
            if p.phase_id == phase_id:
                return p
        raise KeyError(phase_id)


def load_strategy_config(path: Path) -> StrategyConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return StrategyConfig.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(f"strategy file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {problems(exc)}") from None


def problems(exc: ValidationError) -> str:
    """A validation's errors as ``dotted.field: what is wrong``, one after another."""
    out: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(out)


# The playbook's most attempts for a phase of a high-risk category, whatever the file says.
HIGH_RISK_MAX_ATTEMPTS = 2


def _merge(layers: list[tuple[str, dict[str, Any]]]) -> CategoryBudget:
    """``layers`` (section name, partial budget) merged in order, later keys winning, and validated;
    a ``ConfigError`` names the section that gave the offending key."""
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged.update(layer)
    try:
        return CategoryBudget.model_validate(merged)
    except ValidationError as exc:
        field, msg = error_field(exc)
        where = next((name for name, layer in reversed(layers) if field in layer), layers[-1][0])
        raise ConfigError(f"{where}.{field}: {msg}") from None


def budget_for(category: str, cfg: StrategyConfig) -> tuple[CategoryBudget, bool]:
    """The budget of one category and whether it is high-risk. Raises ``ConfigError`` naming the
    strategy section and key at fault (``StrategyConfig`` checks every category when it is loaded)."""
    layers = [("defaults", cfg.defaults), (f"categories.{category}", cfg.categories.get(category, {}))]
    high = category in cfg.high_risk_categories
    if high:
        layers.append(("high_risk", cfg.high_risk))
    try:
        budget = _merge(layers)
    except ConfigError as exc:
        raise ConfigError(f"strategy for category {category!r}: {exc}") from None
    if high:  # the playbook's floor for high-risk work, whatever the file says
        budget = budget.model_copy(update={"ci_profile": "strict", "audit": "required", "dual_audit": True,
                                           "max_attempts": min(budget.max_attempts, HIGH_RISK_MAX_ATTEMPTS)})
    return budget, high


def compile_strategy(plan: Plan, cfg: StrategyConfig) -> CompiledStrategy:
    """Pure: the plan's phases with their budgets. Raises ``PlanError`` when the plan exceeds the run's limits."""
    phases: list[PhaseStrategy] = []
    for tier, phase in plan.phases():
        budget, high = budget_for(phase.category, cfg)
        phases.append(
            PhaseStrategy(
                phase_id=phase.id,
                tier_id=tier.id,
                category=phase.category,
                complexity=phase.complexity,
                high_risk=high,
                **budget.model_dump(),
            )
        )
    if len(phases) > cfg.run.max_phases:
        raise PlanError("tiers", f"{len(phases)} phases exceed the run limit of {cfg.run.max_phases}")
    return CompiledStrategy(
        project=plan.project,
        run=cfg.run,
        test_command=list(plan.test_command or cfg.run.test_command),
        phases=phases,
        flakiness=cfg.flakiness,
    )
