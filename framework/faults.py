"""Fault injection for the tests that interrupt a save at each of its boundaries.

`FRAMEWORK_TEST_KILL_AT=BOUNDARY:N` makes this process kill itself with SIGKILL the N-th time it
reaches BOUNDARY (`room_checked`: the free space for the file was checked, nothing written yet;
`written`: the temporary file is on disk; `renamed`: it has its real name; `indexed`:
index.json lists it; `linked`: another name for it exists, not yet listed; `retained`:
retention is done).
`FRAMEWORK_TEST_STOP_AT=BOUNDARY:N` makes it stop itself with SIGSTOP there instead, so that a
test can change the world under it (fill the disk) before it sends SIGCONT.
Never set them outside those tests. Unset, a boundary costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

KILL_ENV = "FRAMEWORK_TEST_KILL_AT"
STOP_ENV = "FRAMEWORK_TEST_STOP_AT"
SIGNALS = {KILL_ENV: signal.SIGKILL, STOP_ENV: signal.SIGSTOP}
_reached: Counter = Counter()


def boundary(name: str) -> None:
    for env, signum in SIGNALS.items():
        where, _, nth = os.environ.get(env, "").partition(":")
        if where != name:
            continue
        _reached[env] += 1
        if _reached[env] == int(nth or 1):
            # To this thread: sent to the process, the signal may be taken by another thread, and
            # this one (a background writer) would go on writing before the whole process stops.
            signal.pthread_kill(threading.get_ident(), signum)
