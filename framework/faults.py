"""Fault injection for the tests that kill a save at each of its boundaries.

`FRAMEWORK_TEST_KILL_AT=BOUNDARY:N` makes this process kill itself with SIGKILL the N-th time it
reaches BOUNDARY (`written`: the temporary file is on disk; `renamed`: it has its real name;
`indexed`: index.json lists it; `linked`: another name for it exists, not yet listed;
`retained`: retention is done).
Never set it outside those tests. Unset, a boundary costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_ENV = "FRAMEWORK_TEST_KILL_AT"
_reached: Counter = Counter()


def boundary(name: str) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    where, _, nth = spec.partition(":")
    if where != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
