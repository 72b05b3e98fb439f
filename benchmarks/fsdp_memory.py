"""How much memory does each rank hold with `trainer.strategy=ddp` and with `fsdp`?

For each strategy and number of ranks, this script starts that many processes on this machine
(gloo, one thread each), builds the same Transformer (framework.models, the blocks of
`model=transformer`, wider and deeper) in each, spreads it as the framework does
(framework.engine.strategy.spread: DDP, or FSDP2's fully_shard on every block and the root),
and takes a few Adam steps on random tokens. Each rank then counts the bytes of the tensors it
holds: its parameters, their gradients and Adam's state (for FSDP the local shards of the
DTensors, `.to_local()`; for DDP the whole tensors). Not in that count: DDP's gradient buckets
(a second copy of the gradients, kept), FSDP's parameters gathered for a block's forward or
backward pass (freed after it), the whole model every rank builds before it is sharded, the
activations. Two figures of resident memory give them, each counted from when the process was
ready (torch imported, the group joined, no model yet): what it holds after the steps, and its
peak (getrusage); the largest of any rank.

    python benchmarks/fsdp_memory.py                      # 2 and 4 ranks, ddp and fsdp
    python benchmarks/fsdp_memory.py --ranks 2 --layers 2 --width 256
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import socket

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

MB = 10**6
VOCAB, BLOCK, BATCH = 256, 64, 4  # characters, a window's length, windows per step and rank


def local_bytes(tensor: torch.Tensor | None) -> int:
    """The bytes this rank holds of a tensor: its shard, for a DTensor."""
    if tensor is None:
        return 0
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def rss_mb() -> float:
    """The resident memory now, once freed memory is handed back (glibc keeps freed heap pages)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def rank_main(rank: int, world: int, port: int, strategy: str, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    # FSDP is imported by spread for fsdp only: here, for both, before `ready`.
    from torch.distributed.fsdp import fully_shard  # noqa: F401

    from framework import distributed
    from framework.engine.strategy import spread
    from framework.models import Transformer

    distributed.init()
    ready, ready_peak = rss_mb(), peak_rss_mb()
    torch.manual_seed(0)
    model = Transformer(VOCAB, BLOCK, args.layers, args.heads, args.width, dropout=0.0, tie_weights=True)
    model, _ = spread(model, strategy, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(args.steps):
        tokens = torch.randint(VOCAB, (BATCH, BLOCK + 1), generator=generator)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=False)  # the gradients stay allocated, as they are between steps
        loss.backward()
        optimizer.step()
    parameters = list(model.parameters())
    held = {
        "parameters": sum(local_bytes(p) for p in parameters),
        "gradients": sum(local_bytes(p.grad) for p in parameters),
        "optimizer": sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
        "whole model": sum(p.numel() for p in parameters) * 4,  # every parameter's full size, fp32
        "rss": rss_mb() - ready,
        "peak rss": peak_rss_mb() - ready_peak,
    }
    distributed.barrier()
    results.put((rank, held))
    distributed.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(strategy: str, world: int, args) -> list[dict]:
    """Each rank's figures, by rank."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(rank_main, args=(world, free_port(), strategy, args, results), nprocs=world,
                       start_method="spawn")  # fmt: skip
    by_rank = dict(results.get() for _ in range(world))
    return [by_rank[r] for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4], help="numbers of processes")
    parser.add_argument("--layers", type=int, default=4, help="Transformer blocks")
    parser.add_argument("--width", type=int, default=512, help="the model's width (n_embd)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="Adam steps before counting")
    args = parser.parse_args()
    # Allocations of 128 KiB and more straight from the system, handed back when freed: glibc
    # otherwise keeps freed heap pages, and resident memory tells the allocator's history (FSDP's
    # gathered parameters, freed block after block) more than what each strategy holds.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # read by each rank's libc at its start

    rows = []
    for world in args.ranks:
        for strategy in ("ddp", "fsdp"):
            ranks = measure(strategy, world, args)
            largest = max(ranks, key=total)
            rows.append((strategy, world, largest, ranks))
    whole = rows[0][2]["whole model"]
    print(f"torch {torch.__version__}, gloo on CPU, 1 thread per rank; Transformer of {args.layers} blocks, "
          f"width {args.width}: {whole / MB:.1f} MB of fp32 parameters; Adam, {args.steps} steps; "
          "the largest rank's tensors")  # fmt: skip
    print()
    print("| strategy | ranks | parameters (MB) | gradients (MB) | Adam state (MB) | total (MB) | total / ddp's "
          "| RSS held (MB) | peak RSS rise (MB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, world, largest, ranks in rows:
        ddp = next(r[2] for r in rows if r[0] == "ddp" and r[1] == world)
        held, peak = max(r["rss"] for r in ranks), max(r["peak rss"] for r in ranks)
        print(f"| {strategy} | {world} | {largest['parameters'] / MB:.1f} | {largest['gradients'] / MB:.1f} "
              f"| {largest['optimizer'] / MB:.1f} | {total(largest) / MB:.1f} | {total(largest) / total(ddp):.3f} "
              f"| {held:.0f} | {peak:.0f} |")  # fmt: skip


def total(held: dict) -> int:
    return held["parameters"] + held["gradients"] + held["optimizer"]


if __name__ == "__main__":
    main()
