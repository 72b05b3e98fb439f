"""Seeding, determinism levels and the fingerprint of a final state.

Every setting is written explicitly each run, both ways: Hydra's basic launcher runs sweep jobs
in one process, and a flag left on by one job must not leak into the next.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import numpy as np
import torch

from framework.config import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python `random`, NumPy's global RNG and torch on the CPU and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def apply_determinism(level: str) -> dict:
    """Put the determinism level in force and return the settings actually in force.

    off:    seeds set (initialisation is repeatable), cuDNN may pick the fastest kernels.
    seeded: the same, with cuDNN benchmarking off so kernel choice does not vary.
    strict: deterministic algorithms only; an op without one raises an error.
    """
    strict = level == "strict"
    if strict:
        if not hash_seed_in_force():
            raise ConfigError(
                "determinism=strict needs PYTHONHASHSEED set before Python starts (setting it inside a "
                "running interpreter changes nothing). Give determinism=strict on the command line (the "
                "framework then re-launches itself with PYTHONHASHSEED=0), or run "
                "`PYTHONHASHSEED=0 python -m framework ...`, or use determinism=seeded."
            )
        # cuBLAS reads this when CUDA starts; setting it before any CUDA work is enough.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Only when it changes: the first call imports torch's compiler stack (seconds).
    if torch.are_deterministic_algorithms_enabled() != strict or torch.is_deterministic_algorithms_warn_only_enabled():
        torch.use_deterministic_algorithms(strict)
    torch.backends.cudnn.benchmark = level == "off"
    torch.backends.cudnn.deterministic = strict
    return {
        "level": level,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
    }


def hash_seed_in_force() -> bool:
    """Whether this interpreter's str hashes follow PYTHONHASHSEED: a fresh interpreter with
    the same environment must hash a probe string exactly as this one does."""
    if "PYTHONHASHSEED" not in os.environ:
        return False
    probe = "framework-hash-probe"
    out = subprocess.run(
        [sys.executable, "-c", f"print(hash({probe!r}))"], capture_output=True, text=True, env=os.environ, timeout=60
    )
    return out.returncode == 0 and out.stdout.strip() == str(hash(probe))


def fingerprint(*state_dicts: dict) -> str:
    """sha256 over the exact bytes of every tensor (and the repr of every other value),
    visited in sorted key order, so two runs agree only if every bit of their state does."""
    h = hashlib.sha256()
    for sd in state_dicts:
        _feed(h, "", sd)
    return h.hexdigest()


def _feed(h, path: str, value) -> None:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            _feed(h, f"{path}/{key}", value[key])
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _feed(h, f"{path}/{i}", item)
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{path}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    else:
        h.update(f"{path}={value!r}".encode())
