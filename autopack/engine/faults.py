"""Named crash points for the chaos suite.

``AUTOPACK_CRASH_AT=name[,name…]`` makes the process kill itself with SIGKILL the first time it
reaches a named point; ``AUTOPACK_CRASH_DIR`` holds a marker per point so each crashes once per
folder (``AUTOPACK_CRASH_TIMES=N`` crashes N times). Unset (the default), a crash point is a no-op.
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


def crash_point(name: str) -> None:
    wanted = os.environ.get("AUTOPACK_CRASH_AT")
    if not wanted or name not in wanted.split(","):
        return
    folder = Path(os.environ.get("AUTOPACK_CRASH_DIR", "."))
    times = int(os.environ.get("AUTOPACK_CRASH_TIMES", "1"))
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(times):
        marker = folder / f"crashed-{name}-{n}"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
