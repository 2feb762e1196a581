"""Named crash points for the chaos suite.

``AUTOPACK_CRASH_AT=name[,name…]`` makes the process kill itself with SIGKILL the first time it
reaches a named point (``AUTOPACK_PAUSE_AT`` stops it with SIGSTOP instead); ``AUTOPACK_CRASH_DIR``
holds a marker per point so each fires once per folder (``AUTOPACK_CRASH_TIMES=N``: N times).
Unset (the default), a crash point is a no-op.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

POINTS = (
    "after_model_answer",  # the model's answer is stored, the step has not finished
    "after_commit",  # the candidate commit exists, the database does not know it
    "after_ref_moved",  # the integration branch moved, the database commit has not happened
    "after_db_commit",  # the step committed, the next step was not enqueued
    "before_ack",  # the next step was enqueued, the message not acknowledged
)


def _first_times(var: str, name: str, prefix: str) -> bool:
    """True the first N times (AUTOPACK_CRASH_TIMES) any process reaches ``name`` listed in ``var``."""
    wanted = os.environ.get(var)
    if not wanted or name not in wanted.split(","):
        return False
    folder = Path(os.environ.get("AUTOPACK_CRASH_DIR", "."))
    times = int(os.environ.get("AUTOPACK_CRASH_TIMES", "1"))
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(times):
        try:
            fd = os.open(folder / f"{prefix}-{name}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


def crash_point(name: str) -> None:
    """SIGKILL this process here (AUTOPACK_CRASH_AT), or stop it with SIGSTOP (AUTOPACK_PAUSE_AT:
    a worker frozen past its lease, to be continued with SIGCONT after another took over)."""
    if _first_times("AUTOPACK_CRASH_AT", name, "crashed"):
        os.kill(os.getpid(), signal.SIGKILL)
    if _first_times("AUTOPACK_PAUSE_AT", name, "paused"):
        os.kill(os.getpid(), signal.SIGSTOP)
