"""Serving the API: gunicorn for the prod profile, werkzeug's server for the local one.

werkzeug's server is a development server (it says so at start); a cluster that is redeployed, load
balanced and followed by long-lived event streams needs a real one. gunicorn with threaded workers
(``gthread``) serves each event stream from a thread, restarts a worker that dies, and stops
gracefully on SIGTERM (in-flight requests get ``graceful_timeout`` seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

WsgiApp = Callable[..., Any]


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code; the app is made in each worker after the fork (no shared
    database connections)."""

    def __init__(self, factory: Callable[[], WsgiApp], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # a setting this gunicorn does not know (an older one) is left out
                self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        return self.factory()


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,  # a worker that stops answering its arbiter this long is replaced
        "graceful_timeout": 10,  # SIGTERM: requests in flight (and event streams) get this long
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "proc_name": "autopack-web",
        # gunicorn 27's control socket is one path per user ($HOME/.gunicorn): two web processes on
        # a machine would fight over it, and nothing here uses it.
        "control_socket_disable": True,
    }


def serve_gunicorn(factory: Callable[[], WsgiApp], host: str, port: int, *, workers: int = 2, threads: int = 8) -> None:
    """Serve ``factory()``'s app with gunicorn until SIGTERM or SIGINT."""
    _Gunicorn(factory, gunicorn_options(host, port, workers, threads)).run()
