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
    attempt_details: list[AttemptOut]


class TierOut(BaseModel):
    id: str
    name: str
    state: str
    phases: list[PhaseOut]


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
    created_at: str
    finished_at: str | None
    tiers: list[TierOut]


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
    "RunList": RunList,
    "EventList": EventList,
    "Health": Health,
}
