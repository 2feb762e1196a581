"""Private Redis and PostgreSQL servers on free loopback ports, for the scenarios that restart
them (the machine's shared services are never touched). Every process is ended by its id."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from autopack.procs import free_port


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} (Debian package postgresql) is needed to start a private PostgreSQL server")
    return path


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is needed for the Redis restart scenario")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


class PostgresServer:
    """initdb + pg_ctl as the ``postgres`` user (initdb refuses root), in a folder of its own under
    the system's temp directory, removed by ``remove``.

    Not under pytest's ``tmp_path``: any pytest session starting meanwhile (a nested one, another
    on the machine) resets ``/tmp/pytest-of-<user>`` to mode 0700, and the postgres user could then
    no longer reach its data directory, so a restart mid-test failed with "could not access
    directory … Permission denied"."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="autopack-chaos-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")  # /tmp itself lets every user through
        subprocess.run([*self.as_postgres, _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        argv = [*self.as_postgres, _pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.folder / "pg.log"), "-w", "start"]
        proc = subprocess.run(argv, capture_output=True)
        if proc.returncode != 0:
            log = (self.folder / "pg.log").read_text(errors="replace")[-3000:] if (self.folder / "pg.log").exists() else ""
            pytest.fail(f"pg_ctl start failed ({proc.returncode}): {proc.stdout.decode(errors='replace')}"
                        f"{proc.stderr.decode(errors='replace')}\n{log}")

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run([*self.as_postgres, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], capture_output=True)

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
