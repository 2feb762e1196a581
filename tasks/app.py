"""The Celery application, configured from the one settings object."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from autopack.settings import Settings, get_settings

QUEUES = ("build", "ci", "audit", "agents", "events", "maintenance")
# Queues whose tasks are long: one message at a time per worker process.
LONG_QUEUES = ("build", "ci", "audit", "agents")

# Step name -> (task name, queue).
ROUTES: dict[str, tuple[str, str]] = {
    "start_run": ("autopack.start_run", "build"),
    "baseline": ("autopack.baseline", "ci"),
    "build": ("autopack.build_phase", "build"),
    "probe": ("autopack.probe", "ci"),
    "audit": ("autopack.audit", "audit"),
    "decide": ("autopack.decide", "events"),
    "diagnose": ("autopack.diagnose", "agents"),
}


def queue_time_limit(settings: Settings, queue: str) -> int:
    """The hard time limit (seconds) of the tasks on ``queue``."""
    return {"build": settings.build_time_limit, "ci": settings.ci_time_limit, "audit": settings.audit_time_limit,
            "agents": settings.agents_time_limit}.get(queue, settings.default_time_limit)


def celery_config(settings: Settings) -> dict[str, Any]:
    if settings.profile == "local" and settings.celery_broker_url.startswith("filesystem://"):
        settings.ensure_dirs()
    conf: dict[str, Any] = {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.celery_result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "events",
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_routes": {
            **{name: {"queue": queue} for name, queue in ROUTES.values()},
            "autopack.maintenance.reconcile": {"queue": "maintenance"},
            "autopack.maintenance.cleanup": {"queue": "maintenance"},
            "autopack.maintenance.flakiness": {"queue": "maintenance"},
            "autopack.agents.ping": {"queue": "agents"},
            "autopack.events.dispatch": {"queue": "events"},
        },
        # Per-queue limits: hard kills the pool process, soft raises in the task a little earlier.
        "task_annotations": {
            name: {"time_limit": limit, "soft_time_limit": max(1, limit - 30)}
            for name, queue in ROUTES.values()
            for limit in [queue_time_limit(settings, queue)]
        },
        "task_track_started": True,
        "result_expires": 24 * 3600,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": settings.max_tasks_per_child,
        "worker_max_memory_per_child": settings.max_memory_per_child_kb,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout_s,
        "worker_lost_wait": settings.worker_lost_wait_s,
        "timezone": "UTC",
    }
    if settings.celery_broker_url.startswith("filesystem://"):
        conf["broker_transport"] = "tasks.fs_transport:Transport"  # atomic message files
        conf["broker_transport_options"] = {
            "data_folder_in": str(settings.broker_dir / "queue"),
            "data_folder_out": str(settings.broker_dir / "queue"),
            "processed_folder": str(settings.broker_dir / "processed"),
            "store_processed": False,
            "control_folder": str(settings.broker_dir / "control"),
            "polling_interval": settings.poll_interval,
        }
    else:
        # Every place Redis' visibility timeout must be set, above the longest step's hard limit.
        vt = max(settings.visibility_timeout, *(queue_time_limit(settings, q) for q in QUEUES)) + 60
        conf["broker_transport_options"] = {"visibility_timeout": vt}
        conf["result_backend_transport_options"] = {"visibility_timeout": vt}
        conf["visibility_timeout"] = vt
    return conf


def configure(celery: Celery, settings: Settings) -> None:
    """(Re)configure ``celery`` from ``settings``; used at import and by tests with their own state folder."""
    celery.conf.update(celery_config(settings))


app = Celery("autopack")
configure(app, get_settings())

# Register the tasks of every queue (each module imports ``app`` from here).
from tasks import agents, audit, build, ci, events, maintenance  # noqa: E402,F401
