"""One settings object for the whole system, read from ``AUTOPACK_*`` environment variables.

Two profiles share one code path: ``local`` (SQLite, kombu's filesystem transport, everything under
one state folder) and ``prod`` (Redis broker, PostgreSQL through psycopg 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOPACK_", extra="ignore")

    profile: Literal["local", "prod"] = "local"
    state_dir: Path = Path(".autopack")
    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    config_dir: Path = ROOT / "config"
    prompts_dir: Path = ROOT / "prompts"
    api_url: str = "http://127.0.0.1:8000"
    # With a token set, the API and the dashboard answer only requests that carry it (web/auth.py),
    # and the CLI sends it. Empty is unset.
    api_token: SecretStr | None = None

    # Sandbox: "bwrap" (default) or "none" (explicit opt-out: no isolation at all).
    sandbox: Literal["bwrap", "none"] = "bwrap"
    # Where each bubblewrap run gets a cgroup that caps its total memory and processes: "auto" (cgroup
    # v1 where the worker may make groups), "off", or a cgroup v2 folder delegated to the worker
    # (autopack/sandbox/cgroups.py).
    sandbox_cgroup: str = "auto"
    # Models: "live" calls providers; "replay" serves a cassette; "record" calls and records.
    llm_mode: Literal["live", "replay", "record"] = "live"
    cassette: Path | None = None
    # A Python file whose respond(request) plays the model (authoring cassettes, tests). Off by default.
    llm_script: Path | None = None

    # Celery tuning: filesystem transport polling and per-queue hard time limits (seconds). Durations
    # and counts below must be positive (finite) unless a comment says 0 turns something off.
    poll_interval: float = Field(default=0.05, gt=0, allow_inf_nan=False)
    build_time_limit: int = Field(default=900, ge=1)
    ci_time_limit: int = Field(default=1200, ge=1)
    audit_time_limit: int = Field(default=600, ge=1)
    agents_time_limit: int = Field(default=900, ge=1)  # the Doctor: up to three model calls (cheap, strong, planner) and git
    default_time_limit: int = Field(default=300, ge=1)
    # Redis redelivers an unacknowledged message after this; the broker gets the larger of it and
    # every queue's hard limit, plus a minute (tasks/app.py).
    visibility_timeout: int = Field(default=4 * 3600, ge=1)
    # Worker recycling and deploys: a pool process is replaced after this many tasks or this much
    # resident memory (KiB). A cold shutdown (SIGQUIT; SIGTERM too where REMAP_SIGTERM=SIGQUIT, as the
    # Procfile and docker-compose.yml set for workers) first lets running steps go on for up to the
    # soft shutdown timeout; a plain SIGTERM is Celery's warm shutdown, which waits for them.
    # 0 KiB: no memory cap; 0 s: no soft shutdown (Celery's meanings). Celery refuses 0 tasks.
    max_tasks_per_child: int = Field(default=200, ge=1)
    max_memory_per_child_kb: int = Field(default=1_000_000, ge=0)
    soft_shutdown_timeout_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    # How long a worker waits for a killed pool process's result before it gives the task back to
    # the broker (Celery's ``worker_lost_wait``; its pool slot stays taken until then). A step sent
    # again after its result did arrive changes nothing: its claim finds it done.
    worker_lost_wait_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    worker_name_prefix: str = Field(default="autopack")

    # Leases: a claimed step's lease lasts this long and is renewed every third of it while the
    # worker is alive; the reconciler re-enqueues steps whose lease expired or that no worker
    # picked up within the grace period; a step delivered this many times is given up.
    lease_ttl_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    pickup_grace_s: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    max_deliveries: int = Field(default=3, ge=1)
    reconcile_interval_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # Cleanup (beat): a finished run's worktree is removed once the run has been over this long
    # (0: at the next cleanup).
    worktree_retention_s: float = Field(default=3600.0, ge=0, allow_inf_nan=False)
    cleanup_interval_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    # Flakiness (beat): known-flaky test records are aged (cleared, forgotten) this often.
    flakiness_interval_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    # An event stream of a finished run ends once the run's last events are written: those its
    # end's handlers add (flaky tests, retired rules) come from the events queue; if that is down,
    # the stream ends after this many seconds anyway.
    stream_end_wait_s: float = Field(default=30.0, ge=0, allow_inf_nan=False)

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        if isinstance(value, str):  # surrounding blanks (a line of .env) are not part of it
            value = value.strip()
            if value and not all("!" <= c <= "~" for c in value):
                raise ValueError("AUTOPACK_API_TOKEN must be visible ASCII characters only (it is sent in an HTTP header)")
        return None if value in ("", None) else value

    @property
    def token(self) -> str | None:
        """The API token's value, or None."""
        return self.api_token.get_secret_value() if self.api_token is not None else None

    @property
    def state_path(self) -> Path:
        return self.state_dir.resolve()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.profile == "prod":
            return self.postgres_url
        return f"sqlite:///{self.state_path / 'autopack.sqlite'}"

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return self.redis_url if self.profile == "prod" else "filesystem://"

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.profile == "prod":
            return self.redis_url
        return f"db+sqlite:///{self.state_path / 'results.sqlite'}"

    # The filesystem broker's folder (default: <state>/broker); the demo uses a private one.
    broker_folder: Path | None = None

    @property
    def broker_dir(self) -> Path:
        return (self.broker_folder or self.state_path / "broker").resolve()

    @property
    def worktrees_dir(self) -> Path:
        return self.state_path / "worktrees"

    def ensure_dirs(self) -> None:
        for sub in ("queue", "processed", "control"):
            (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("worktrees", "logs"):
            (self.state_path / sub).mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    return Settings()
