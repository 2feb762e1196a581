"""Run by the dispatcher crash test in a child process: dispatch with two handlers that record
their effect in a table, under AUTOPACK_CRASH_AT=mid_fanout (SIGKILL after the first handler)."""

from __future__ import annotations

import sys
from types import SimpleNamespace


from tests.events.effects import effect_handlers
from autopack.events.dispatch import dispatch_pending

if __name__ == "__main__":
    dispatch_pending(SimpleNamespace(db_url=sys.argv[1]), handlers=effect_handlers())
    print("finished without crashing")
