"""What does a framework checkpoint cost over a plain torch.save / torch.load of the same state?

For each payload size, the same state (plain float32 tensors of 16 MiB and a model-only
checkpoint's other keys) is written and read in turns, in one folder on one disk:
    raw save        torch.save into an open file, flush, fsync
    framework save  framework.checkpoint.io.write (temporary file, sha256 and xxh3 while
                    writing, fsync, verified memory-mapped, rename, folder fsync) and its
                    index.json entry; the file it replaces is deleted in another thread, as in
                    a run (the raw save truncates it in its open: it pays for that, ours not)
    raw load        torch.load(weights_only=True)
    framework load  framework.checkpoint.io.load_checked: torch.load(weights_only=True,
                    mmap=True), the xxh3 of the mapped file against index.json, format, keys, types
The files are read right after they are written (from the page cache), where the difference
between the two shows most. Before each timed call, os.sync() lets the disk finish what the
previous one left (freeing a replaced file's blocks): on a virtual disk that varies most.
The goals: save at most 1.15 times raw, load at most 1.1 times.

    python benchmarks/checkpoint_io.py                    # 10 MB to 1 GB, median of 6
    python benchmarks/checkpoint_io.py --sizes 10 64 --rounds 1 --folder /scratch
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from framework.checkpoint import formats, io
from framework.checkpoint.index import Index

CHUNK = 16 * 2**20  # bytes per tensor
MB = 10**6


def payload_of(size_mb: int) -> dict:
    """A model-only checkpoint of about `size_mb` MB of float32 tensors."""
    count = size_mb * MB // 4
    sizes = [CHUNK // 4] * (count // (CHUNK // 4)) + ([count % (CHUNK // 4)] if count % (CHUNK // 4) else [])
    weights = {f"layer{i}.weight": torch.randn(n) for i, n in enumerate(sizes)}
    meta = {"format_version": formats.FORMAT_VERSION, "kind": "model", "origin": "trained", "exact_resume": True}
    return {"epoch": 1, "global_step": 100, "model_state_dict": weights, "config": "seed: 0\n", "meta": meta}


def raw_save(payload: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def framework_save(payload: dict, path: Path, discard: ThreadPoolExecutor) -> None:
    entry = io.write(payload, path, discard)  # the replaced file is deleted in `discard`, as a run does
    Index(path.parent).record({"file": path.name, "role": "last", "kind": "model", "epoch": 1, "step": 100,
                               "position": 0, "metric": None, **entry, "time": time.time()})  # fmt: skip


def framework_load(path: Path) -> dict:
    return io.load_checked(path, Index(path.parent).entry(path))[0]


def raw_load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def timed(action, settle: float) -> float:
    # Outside the timing: what the previous call left for the disk to do is done. os.sync()
    # does not wait for all of it: on a disk mounted with `discard`, the blocks a deleted or
    # truncated file freed are trimmed after the journal commits, and at 1 GB that landed in the
    # next call's time, the raw save's or ours (every other round took twice as long).
    os.sync()
    time.sleep(settle)
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(size_mb: int, folder: Path, rounds: int, settle: float) -> tuple:
    payload = payload_of(size_mb)
    raw_path, ours_path = folder / "raw.pt", folder / "last.pt"
    times = {"raw save": [], "save": [], "raw load": [], "load": []}
    discard = ThreadPoolExecutor(1)
    saves = {
        "raw save": lambda: raw_save(payload, raw_path),
        "save": lambda: framework_save(payload, ours_path, discard),
    }
    loads = {"raw load": lambda: raw_load(raw_path), "load": lambda: framework_load(ours_path)}
    # In turns, so that the disk's moods fall on both. Who goes first alternates: at 1 GB this
    # virtual disk made the second of two saves in a row up to twice as slow, whichever it was.
    for i in range(rounds):
        for kinds in (saves, loads):
            for kind in sorted(kinds, reverse=i % 2 == 1):
                times[kind].append(timed(kinds[kind], settle))
                discard.submit(int).result()  # untimed: the replaced file is gone before the next timing
    med = {k: statistics.median(v) for k, v in times.items()}
    raw_path.unlink()
    return (size_mb, med["raw save"], med["save"], med["save"] / med["raw save"],
            med["raw load"], med["load"], med["load"] / med["raw load"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 64, 256, 1024], help="payload sizes in MB")
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="saves and loads of each kind, taking turns (even: each goes first as often)",
    )
    parser.add_argument("--folder", type=Path, help="where to write (default: a temporary folder)")
    parser.add_argument("--settle", type=float, default=0.0, help="seconds the disk is left alone before each timing")
    args = parser.parse_args()
    print("| payload (MB) | raw save + fsync (s) | framework save (s) | ratio ", end="")
    print("| raw load (s) | framework load (s) | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for size in args.sizes:
            row = measure(size, Path(tmp), args.rounds, args.settle)
            print("| {} | {:.4f} | {:.4f} | {:.2f} | {:.4f} | {:.4f} | {:.2f} |".format(*row))


if __name__ == "__main__":
    main()
