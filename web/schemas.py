"""Pydantic models of the API's bodies; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from autopack.plan import Plan
from autopack.strategy import CompiledStrategy


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable error kind")
    message: str
    field: str | None = Field(default=None, description="dotted path of the offending field (422)")


class RunCreated(BaseModel):
    id: str
    state: str
    branch: str
    url: str


class DryRun(BaseModel):
    dry_run: bool = True
    strategy: CompiledStrategy


class AttemptOut(BaseModel):
    number: int
    state: str
    model: str | None
    parent_commit: str | None
    commit: str | None
    decision: str | None
    failure: str | None
    failure_class: str | None
    refusals: list[Any]
    edit_rounds: list[Any]
    test_summary: str | None
    gate: dict[str, Any]
    audit: dict[str, Any] | None
    classification: str | None = Field(description="the failure's class: edit_not_applied, scope_violation, test_failure, "
                                                    "regression, auditor_rejection, provider_error, timeout, "
                                                    "sandbox_resource_limit, infrastructure, budget")
    doctor: dict[str, Any] | None = Field(description="what was done about the failure and why: action, source "
                                                       "(rules or model), confidence, reason, hint, the Doctor's calls")
    routing: dict[str, Any] | None = Field(description="the Builder model wanted and chosen, why, models skipped "
                                                        "(quota, outage, high-risk) and fallbacks taken")
    submission: dict[str, Any] | None = Field(description="an external Builder's submission: who and when")
    tokens: int
    cost_usd: float


class PhaseOut(BaseModel):
    id: str
    state: str
    attempts: int
    max_attempts: int
    commit: str | None
    tokens: int
    cost_usd: float
    category: str | None
    goal: str | None
    replans: int
    plan_history: list[Any]
    builder: str = Field(description="model, or external: the phase waits for POST .../builder_result")
    feedback: str | None = Field(description="what the next attempt is told about the last failure")
    attempt_details: list[AttemptOut]


class TierOut(BaseModel):
    id: str
    name: str
    state: str
    phases: list[PhaseOut]


class ChargedOut(BaseModel):
    """Calls counted at their worst case: their worker died or froze before reporting the usage."""

    calls: int
    tokens: int
    cost_usd: float


class RunOut(BaseModel):
    id: str
    project: str
    state: str
    failure_reason: str | None
    base_branch: str
    base_commit: str | None
    branch: str
    head_commit: str | None
    tokens: int
    token_cap: int
    cost_usd: float
    cost_cap_usd: float
    tokens_reserved: int = Field(description="worst case of the model calls in flight")
    cost_reserved_usd: float
    charged: ChargedOut
    created_at: str
    finished_at: str | None
    tiers: list[TierOut]


class BuilderResult(BaseModel):
    edits: str = Field(description="the edits, in any format a Builder may answer in: whole files "
                                   "(=== FILE: path === and a fenced block), search/replace blocks or a unified diff")
    by: str | None = Field(default=None, max_length=200, description="who submits (a person, an agent)")


class BuilderResultAccepted(BaseModel):
    run_id: str
    phase: str
    attempt: int
    state: str


class RunSummary(BaseModel):
    id: str
    project: str
    state: str
    branch: str
    tokens: int
    cost_usd: float
    created_at: str


class RunList(BaseModel):
    runs: list[RunSummary]


class EventOut(BaseModel):
    seq: int
    type: str
    phase: str | None
    attempt_id: int | None
    payload: dict[str, Any]
    at: str


class EventList(BaseModel):
    run_id: str
    events: list[EventOut]
    last_seq: int


class Health(BaseModel):
    ok: bool
    database: str
    broker: str
    profile: str


SCHEMAS: dict[str, type[BaseModel]] = {
    "Plan": Plan,
    "Error": ErrorBody,
    "RunCreated": RunCreated,
    "DryRun": DryRun,
    "Run": RunOut,
    "BuilderResult": BuilderResult,
    "BuilderResultAccepted": BuilderResultAccepted,
    "RunList": RunList,
    "EventList": EventList,
    "Health": Health,
}
