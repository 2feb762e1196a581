"""SQLAlchemy models: the source of truth for projects, runs, tiers, phases, attempts, model calls, events."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, overload

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from a column: SQLite returns it naive, and every one Autopack
    writes is UTC (PostgreSQL returns it aware already)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    repo_path: Mapped[str] = mapped_column(Text)
    base_branch: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="project")


class Run(Base):
    __tablename__ = "runs"
    # A submission retried with the same Idempotency-Key finds its run instead of starting another.
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key", name="uq_runs_project_idempotency_key"),
        # The newest runs (GET /runs, the dashboard), of all projects and of one, without sorting them all.
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_project_created_at", "project_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_run_id)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    state: Mapped[str] = mapped_column(String(48), index=True, default="QUEUED")
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_branch: Mapped[str] = mapped_column(String(200))
    base_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    branch: Mapped[str] = mapped_column(String(200))
    head_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    commit_epoch: Mapped[int] = mapped_column(BigInteger)
    token_cap: Mapped[int] = mapped_column(BigInteger)
    cost_cap_usd: Mapped[float] = mapped_column(Float)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cost_reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # sha256 of the submitted body (canonical JSON): a retry must send the same request.
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)

    project: Mapped[Project] = relationship(back_populates="runs")
    tiers: Mapped[list[Tier]] = relationship(back_populates="run", order_by="Tier.index")
    phases: Mapped[list[Phase]] = relationship(back_populates="run", order_by="Phase.index")


class Tier(Base):
    __tablename__ = "tiers"
    __table_args__ = (UniqueConstraint("run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(Text, default="")
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24), default="PENDING")

    run: Mapped[Run] = relationship(back_populates="tiers")
    phases: Mapped[list[Phase]] = relationship(back_populates="tier", order_by="Phase.index")


class Phase(Base):
    __tablename__ = "phases"
    __table_args__ = (UniqueConstraint("run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    tier_id: Mapped[int] = mapped_column(ForeignKey("tiers.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    index: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(24), default="QUEUED")
    attempts_used: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    current_attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    commit_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    feedback: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Re-planning: the earlier versions of the phase's spec, oldest first, with why they were replaced.
    replans: Mapped[int] = mapped_column(Integer, default=0)
    plan_history: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    run: Mapped[Run] = relationship(back_populates="phases")
    tier: Mapped[Tier] = relationship(back_populates="phases")
    attempts: Mapped[list[Attempt]] = relationship(back_populates="phase", order_by="Attempt.number")


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("phase_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24), default="BUILDING")
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    parent_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    candidate_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edits: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    refusals: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    edit_rounds: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    test_result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    audit: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    failure: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_class: Mapped[str | None] = mapped_column(String(48), nullable=True)
    # Normalised, stable across runs: failure class + hash of the failure's signature.
    failure_key: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    failure_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The failure's class (governance.classify) and what was done about it (rules or the Doctor).
    classification: Mapped[str | None] = mapped_column(String(48), nullable=True)
    doctor: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Which Builder model was chosen and why (escalation, providers skipped for quota or outage, fallbacks).
    routing: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Edits posted by an external Builder (phase ``builder: external``), before they are applied.
    submission: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The lesson model's lesson for the hint this attempt's fix leaves ("" when it gave none).
    lesson: Mapped[str | None] = mapped_column(Text, nullable=True)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    phase: Mapped[Phase] = relationship(back_populates="attempts")


class ModelCall(Base):
    __tablename__ = "model_calls"
    __table_args__ = (Index("ix_model_calls_provider_created_at", "provider", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    phase_id: Mapped[int | None] = mapped_column(ForeignKey("phases.id"), nullable=True, index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"), nullable=True, index=True)
    role: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    request_key: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[dict[str, Any]] = mapped_column(JSON)
    response_text: Mapped[str] = mapped_column(Text, default="")
    stop_reason: Mapped[str] = mapped_column(String(32), default="")
    max_tokens: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The learned rules (ids) and in-run hints (ids) this prompt carried, and their token share.
    rules: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    hints: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    rules_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Event(Base):
    __tablename__ = "events"
    # The reconciler looks for undispatched events every pass: a partial index keeps that a lookup
    # among the few waiting, not a scan of every event ever written.
    __table_args__ = (UniqueConstraint("run_id", "seq"),
                      Index("ix_events_undispatched", "created_at", postgresql_where=text("NOT dispatched"),
                            sqlite_where=text("NOT dispatched")))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(64))
    phase_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StepRow(Base):
    """One pipeline step: the outbox row a message points at, and the lease a worker holds on it.

    A step is created in the transaction of the step before it; the message that carries its id
    is only a doorbell. A worker claims it (``fence`` increases on every claim), heartbeats the
    lease while it works, and marks it done in the same transaction as its final write, checking
    the fence, so a worker whose lease was taken over changes nothing.
    """

    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    arg: Mapped[str] = mapped_column(String(64))
    fence: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)


class EventDelivery(Base):
    """One handler's effect of one event: the unique key makes each (event, handler) happen once."""

    __tablename__ = "event_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "handler"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    handler: Mapped[str] = mapped_column(String(64))
    delivered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Postmortem(Base):
    __tablename__ = "postmortems"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    markdown: Mapped[str] = mapped_column(Text)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Hint(Base):
    """A failure that a later attempt of the same phase fixed: the lesson and its evidence."""

    __tablename__ = "hints"
    __table_args__ = (UniqueConstraint("run_id", "phase_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    phase_key: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(80), index=True)
    failure_class: Mapped[str] = mapped_column(String(48))
    signature: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(64))
    scope: Mapped[list[Any]] = mapped_column(JSON)
    paths: Mapped[list[Any]] = mapped_column(JSON)
    lesson: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Rule(Base):
    """A hint whose failure key recurred in a project, promoted to a rule later prompts carry."""

    __tablename__ = "rules"
    __table_args__ = (UniqueConstraint("project_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    key: Mapped[str] = mapped_column(String(80))
    text: Mapped[str] = mapped_column(Text)
    scope_pattern: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON)
    times_applied: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    effect: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    last_matched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProjectSpend(Base):
    """A project's spend and reservations for one UTC day (the project-per-day cap)."""

    __tablename__ = "project_spend"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cost_reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)


class BudgetReservation(Base):
    """One model call's reserved worst case until it is settled with the reported usage, or charged
    at that worst case by the reconciler when the step that made it can no longer settle it (its
    worker died or froze: the lease expired, another worker re-claimed the step, the step or the run
    ended); a settlement after the charge corrects it. ``released`` is only on rows of older
    versions, which freed the room instead."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    phase_id: Mapped[int | None] = mapped_column(ForeignKey("phases.id"), nullable=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    day: Mapped[str] = mapped_column(String(10))
    tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[float] = mapped_column(Float)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id"), nullable=True)
    fence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(12), default="open", index=True)  # open | settled | charged (| released)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Issue(Base):
    """A problem raised about a project (by the gate, an auditor or the Builder's governance),
    de-duplicated by a stable key across phases and runs."""

    __tablename__ = "issues"
    __table_args__ = (UniqueConstraint("project_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    key: Mapped[str] = mapped_column(String(80))
    source: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(8))
    summary: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(12), default="open")
    count: Mapped[int] = mapped_column(Integer, default=0)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IssueOccurrence(Base):
    __tablename__ = "issue_occurrences"
    __table_args__ = (UniqueConstraint("issue_id", "attempt_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    phase_key: Mapped[str] = mapped_column(String(64))
    tier_key: Mapped[str] = mapped_column(String(64))
    attempt_id: Mapped[int] = mapped_column(Integer)
    open: Mapped[bool] = mapped_column(Boolean, default=True)
    # As raised here (None on rows from before migration 0006: their issue's severity stands for it).
    severity: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FlakyTest(Base):
    """A test of a project that passed on its re-run in some gate: its record as known-flaky
    (``autopack.flakiness``): suspected, quarantined or cleared, with the runs it flaked in."""

    __tablename__ = "flaky_tests"
    __table_args__ = (UniqueConstraint("project_id", "test_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    test_id: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12))  # suspected | quarantined | cleared
    state_reason: Mapped[str] = mapped_column(Text, default="")
    flaky_count: Mapped[int] = mapped_column(Integer, default=0)
    runs: Mapped[list[Any]] = mapped_column(JSON)  # run ids it flaked in since it was last cleared
    passes_since_flaky: Mapped[int] = mapped_column(Integer, default=0)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_flaky_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
