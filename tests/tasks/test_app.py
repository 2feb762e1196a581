"""The Celery settings for long tasks come from the one settings object: late acks with redelivery of
a lost worker's task (capped by the step's delivery count), worker recycling and soft shutdown."""

from __future__ import annotations

import inspect

import pytest
import yaml
from pydantic import ValidationError

from autopack.llm.factory import make_client
from autopack.procs import WORKER_GROUPS
from autopack.settings import ROOT, Settings
from tasks.app import LONG_QUEUES, QUEUES, ROUTES, celery_config, queue_time_limit


@pytest.mark.parametrize("profile", ["local", "prod"])
def test_long_task_settings_reach_celery(profile: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    extra = {"state_dir": tmp_path} if profile == "local" else {}
    settings = Settings(profile=profile, max_tasks_per_child=7, max_memory_per_child_kb=123_456,
                        soft_shutdown_timeout_s=45, max_deliveries=2, worker_lost_wait_s=1.5, **extra)
    conf = celery_config(settings)
    # A task whose worker died is handed to another (acked only when done, rejected on loss);
    # the step row's delivery count, not Celery, bounds how often (runner.give_up).
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_max_tasks_per_child"] == 7
    assert conf["worker_max_memory_per_child"] == 123_456
    assert conf["worker_soft_shutdown_timeout"] == 45
    assert conf["worker_lost_wait"] == 1.5  # a killed pool process's slot is free again after this
    assert conf["worker_send_task_events"] is True and conf["task_send_sent_event"] is True  # Flower sees both profiles


def test_every_step_task_has_its_queues_soft_and_hard_limit() -> None:
    settings = Settings(profile="prod", build_time_limit=1000, ci_time_limit=2000, audit_time_limit=300, default_time_limit=400)
    conf = celery_config(settings)
    limits = {name: (a["soft_time_limit"], a["time_limit"]) for name, a in conf["task_annotations"].items()}
    assert limits["autopack.build_phase"] == (970, 1000)
    assert limits["autopack.probe"] == (1970, 2000)
    assert limits["autopack.audit"] == (270, 300)
    assert limits["autopack.decide"] == (370, 400)
    assert queue_time_limit(settings, "maintenance") == 400
    # diagnose (agents) makes up to three model calls in a row (cheap Doctor, strong Doctor,
    # planner), each up to the adapters' request timeout: the default queue limit (300 s) was short.
    request_timeout = inspect.signature(make_client).parameters["timeout_s"].default
    defaults = celery_config(Settings(profile="prod"))["task_annotations"][ROUTES["diagnose"][0]]
    assert defaults["soft_time_limit"] >= 3 * request_timeout
    for queue in LONG_QUEUES:  # every long queue has a limit of its own
        assert queue_time_limit(Settings(profile="prod", default_time_limit=7), queue) != 7, queue


def test_every_pool_that_runs_a_limited_queue_applies_time_limits() -> None:
    """Celery's thread pool ignores time limits and worker recycling: the Procfile, compose and the
    local profile's worker groups run every queue on prefork (the Builder's queue was on threads,
    so a hung Builder step was never stopped)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("worker"):
            assert "-P threads" not in line and "--pool" not in line, line
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if "worker" in command:
            assert "threads" not in command, name
    assert {pool for _, _, pool, _ in WORKER_GROUPS} == {"prefork"}
    assert {q for _, queues, _, _ in WORKER_GROUPS for q in queues.split(",")} == set(QUEUES)


@pytest.mark.parametrize(("var", "value"), [
    ("AUTOPACK_LEASE_TTL_S", "0"),  # the heartbeat waits ttl/3 = 0: a busy loop renewing the lease
    ("AUTOPACK_LEASE_TTL_S", "-5"),
    ("AUTOPACK_LEASE_TTL_S", "nan"),
    ("AUTOPACK_MAX_DELIVERIES", "0"),  # every step given up at its first delivery
    ("AUTOPACK_BUILD_TIME_LIMIT", "0"),  # soft_time_limit max(1, 0 - 30) = 1 s: every build killed
    ("AUTOPACK_CI_TIME_LIMIT", "-1"),
    ("AUTOPACK_POLL_INTERVAL", "0"),
    ("AUTOPACK_RECONCILE_INTERVAL_S", "0"),
    ("AUTOPACK_RECONCILE_INTERVAL_S", "inf"),
    ("AUTOPACK_PICKUP_GRACE_S", "-1"),
    ("AUTOPACK_VISIBILITY_TIMEOUT", "-1"),
    ("AUTOPACK_MAX_TASKS_PER_CHILD", "0"),  # billiard refuses it when the worker starts
])
def test_settings_refuse_non_positive_durations_and_counts(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=var.removeprefix("AUTOPACK_").lower()):
        Settings()


@pytest.mark.parametrize("var", ["AUTOPACK_MAX_MEMORY_PER_CHILD_KB", "AUTOPACK_SOFT_SHUTDOWN_TIMEOUT_S",
                                 "AUTOPACK_WORKTREE_RETENTION_S", "AUTOPACK_STREAM_END_WAIT_S"])
def test_settings_where_zero_means_off_or_now_take_zero(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    # No memory cap, no soft shutdown (Celery's meanings), worktrees removed at the next cleanup,
    # a finished run's stream ends at once.
    monkeypatch.setenv(var, "0")
    assert getattr(Settings(), var.removeprefix("AUTOPACK_").lower()) == 0
