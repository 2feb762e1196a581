"""The Celery settings for long tasks come from the one settings object: late acks with redelivery of
a lost worker's task (capped by the step's delivery count), worker recycling and soft shutdown."""

from __future__ import annotations

import pytest

from autopack.settings import Settings
from tasks.app import celery_config, queue_time_limit


@pytest.mark.parametrize("profile", ["local", "prod"])
def test_long_task_settings_reach_celery(profile: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    extra = {"state_dir": tmp_path} if profile == "local" else {}
    settings = Settings(profile=profile, max_tasks_per_child=7, max_memory_per_child_kb=123_456,
                        soft_shutdown_timeout_s=45, max_deliveries=2, **extra)
    conf = celery_config(settings)
    # A task whose worker died is handed to another (acked only when done, rejected on loss);
    # the step row's delivery count, not Celery, bounds how often (runner.give_up).
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_max_tasks_per_child"] == 7
    assert conf["worker_max_memory_per_child"] == 123_456
    assert conf["worker_soft_shutdown_timeout"] == 45
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
