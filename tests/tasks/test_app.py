"""The Celery settings for long tasks come from the one settings object: late acks with redelivery of
a lost worker's task (capped by the step's delivery count), worker recycling and soft shutdown."""

from __future__ import annotations

import inspect

import pytest
import yaml

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
