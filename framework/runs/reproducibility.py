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

from framework.config.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python `random`, NumPy's global RNG and torch on the CPU and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def machine_threads() -> int:
    """Every CPU this process may use: its affinity mask, so a SLURM allocation or taskset counts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def pick_num_threads(configured: int | None, recorded: int | None) -> tuple[int, str]:
    """The intra-op thread count of a run, and where it comes from.

    Float results depend on it (a reduction split over 1 or 2 threads adds in another order), so
    it is part of the experiment: the number set in `determinism.num_threads`; else, on resume,
    the number the checkpoint ran with; else every CPU this process may use (under torchrun, its
    share of them with the other processes on this machine). The machine's
    count, not torch's current setting: a launcher that starts jobs with fewer threads (Hydra's
    joblib launcher gives each job one) must not change the bits.
    """
    if configured is not None:
        return configured, "determinism.num_threads"
    if recorded is not None:
        return recorded, "as the checkpoint ran"
    # torchrun's processes on one machine share its CPUs (LOCAL_WORLD_SIZE: 1 without torchrun).
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if sharing > 1:
        return max(1, machine_threads() // sharing), f"this process's share of the CPUs, with {sharing} on this machine"
    return machine_threads(), "every CPU this process may use"


def apply_determinism(level: str, num_threads: int) -> dict:
    """Put the determinism level and thread count in force; return the settings in force.

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
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return {
        "level": level,
        "num_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
    }


def gpu_note(level: str, device: str | None) -> str | None:
    """Why runs with the same seed may differ: on a GPU only `strict` is bitwise."""
    if level == "strict" or not str(device or "").startswith("cuda"):
        return None
    return (
        f"determinism={level} on a GPU is not bitwise repeatable: CUDA kernels such as the atomic "
        "additions in many backward passes sum in a different order on every run, so the same seed "
        "drifts apart in the last bits and then further. determinism=strict is bitwise on a GPU."
    )


# What a run's metrics.json records about how it computed, and why a difference matters.
SETTINGS = {
    "num_threads": "float results depend on the number of intra-op threads",
    "level": "the determinism level",
    "device": "another device computes differently",
    "torch_version": "another torch may use other kernels",
    "cuda_version": "another CUDA may use other kernels",
}


def why_runs_differ(summaries: list[dict]) -> list[str]:
    """Reasons, read from their metrics.json, why runs with the same config need not agree."""

    def setting(summary: dict, key: str):
        for place in (summary.get("determinism") or {}, summary, summary.get("meta") or {}):
            if key in place:
                return place[key]
        return None

    reasons = []
    for key, why in SETTINGS.items():
        values = [setting(s, key) for s in summaries]
        if len({repr(v) for v in values}) > 1:
            reasons.append(f"{key} differs ({', '.join(map(str, values))}): {why}")
    notes = {gpu_note((s.get("determinism") or {}).get("level", ""), s.get("device")) for s in summaries}
    reasons += sorted(n for n in notes if n)
    return reasons


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
