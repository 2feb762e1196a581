"""Celery app and thin task modules, one per queue. ``celery -A tasks worker -Q build``."""

from tasks.app import app

__all__ = ["app"]
