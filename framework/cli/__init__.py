"""The commands: `python -m framework` (train.py), ckpt, recipe, compare, and the sweep's callbacks."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def exit_with(main: Callable[[], int]) -> None:
    """sys.exit(main()). When the reader of the output goes first (`... | head`), end quietly with
    the status of a tool that SIGPIPE ended, as the shell's own tools do: no error, no traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit and would report the same pipe: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    sys.exit(code)
