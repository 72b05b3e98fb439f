"""What a run directory says about where it ran: versions, command, git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import framework


def git_commit() -> str | None:
    """The commit of the framework's source tree, when it is a git checkout."""
    here = Path(framework.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def command_line() -> list[str]:
    """The command as typed: `python -m framework ...` shows up as the module, not its file."""
    args = sys.argv[1:]
    if sys.argv and Path(sys.argv[0]).resolve() == Path(framework.__file__).resolve().parent / "__main__.py":
        return [Path(sys.executable).name, "-m", "framework", *args]
    return [sys.executable, *sys.argv]


def describe() -> dict:
    return {
        "framework_version": framework.__version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "numpy_version": str(np.__version__),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git_commit": git_commit(),
        "hostname": platform.node(),
        "command": command_line(),
    }
