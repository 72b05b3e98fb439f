"""Compare two run directories: identical, or where they first part.

    python -m framework.compare RUN_A RUN_B

Exit status 0 when the runs are identical (same fingerprint, same metrics history, and where
both kept their last checkpoint, every tensor equal), 1 when they differ, 2 when a run cannot
be read or there is nothing to compare (neither has a fingerprint, and they have no last
checkpoint to compare). The last checkpoint is last.pt, or last/, a sharded checkpoint's
directory (trainer.strategy=fsdp), checked against its checksums and read whole.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from framework.checkpoint import sharded, storage
from framework.checkpoint.io import CheckpointError, safe_load
from framework.cli import exit_with
from framework.runs.layout import CHECKPOINTS, HISTORY, LAST, RECORD, RunLayout, alias
from framework.runs.reproducibility import why_runs_differ

HISTORY_EVENTS = ("step", "epoch", "val", "stop")


class CannotCompare(Exception):
    """A run whose files are not what a run writes, or two runs with nothing to compare."""


def read_summary(run_dir: Path) -> dict:
    """metrics.json, which must hold a JSON object."""
    path = RunLayout(run_dir).record
    summary = parsed_json(text_of(path), path)
    if not isinstance(summary, dict):
        raise CannotCompare(f"{path} holds a {type(summary).__name__}, not a JSON object")
    return summary


def read_history(run_dir: Path) -> list[dict]:
    """The step, epoch, val and stop lines of metrics.jsonl: each must be a JSON object with an `event`."""
    path = RunLayout(run_dir).history
    history = []
    for number, line in enumerate(text_of(path).splitlines(), start=1):
        record = parsed_json(line, f"{path} line {number}")
        if not isinstance(record, dict) or "event" not in record:
            raise CannotCompare(f"{path} line {number} is not a JSON object with an 'event' key")
        if record["event"] in HISTORY_EVENTS:
            history.append(record)
    return history


def text_of(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as e:
        raise CannotCompare(f"{path} is not UTF-8 text: {e}") from e


def parsed_json(text: str, where: object) -> object:
    try:
        return json.loads(text)
    except ValueError as e:
        raise CannotCompare(f"{where} is not JSON: {e}") from e


def first_divergence(a: list[dict], b: list[dict]) -> str | None:
    """The first epoch/step where two metric histories differ, in words; None if identical."""
    for ra, rb in zip(a, b):
        if ra != rb:
            keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
            where = f"epoch {ra.get('epoch')} step {ra.get('step')}"
            return f"metrics first differ at {where} ({ra['event']} line): " + ", ".join(
                f"{k} {ra.get(k)!r} vs {rb.get(k)!r}" for k in keys
            )
    if len(a) != len(b):
        shorter = min(len(a), len(b))
        last = (a or b)[shorter - 1] if shorter else {}
        return f"one history stops after epoch {last.get('epoch')} step {last.get('step')} ({len(a)} vs {len(b)} lines)"
    return None


def tensor_differences(ckpt_a: dict, ckpt_b: dict) -> list[str]:
    """Names of the model/optimizer/moving-average tensors that differ (value, dtype or shape),
    the scheduler state, early stopping's state and counters if they differ."""
    found = []
    for key in ("epoch", "global_step"):
        if ckpt_a.get(key) != ckpt_b.get(key):
            found.append(f"{key}: {ckpt_a.get(key)} vs {ckpt_b.get(key)}")
    for section in ("model_state_dict", "optimizer_state_dict", "ema_state_dict"):
        for name, x, y in _paired_tensors(section, ckpt_a.get(section) or {}, ckpt_b.get(section) or {}):
            if x is None or y is None or x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                found.append(name)
    for key in ("scheduler_state_dict", "early_stopping"):
        if ckpt_a.get(key) != ckpt_b.get(key):
            found.append(key)
    return found


def _paired_tensors(prefix, a, b, out=None):
    out = [] if out is None else out
    if isinstance(a, dict) or isinstance(b, dict):
        a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
        for k in sorted(set(a) | set(b), key=str):
            _paired_tensors(f"{prefix}.{k}", a.get(k), b.get(k), out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _paired_tensors(f"{prefix}.{i}", x, y, out)
    elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        out.append((prefix, a, b))
    return out


def compare(a: Path, b: Path) -> list[str]:
    """Every way in which two runs differ; an empty list means identical to the bit. Raises
    CannotCompare when a file is malformed or neither a fingerprint nor a final state can be compared."""
    found = []
    sa, sb = read_summary(a), read_summary(b)
    la, lb = last_checkpoint(a), last_checkpoint(b)
    both_kept_state = la is not None and lb is not None
    # Equal histories alone prove nothing: they hold a few rounded numbers, not the state.
    if sa.get("fingerprint") is None and sb.get("fingerprint") is None and not both_kept_state:
        raise CannotCompare(
            f"nothing to compare: neither {a} nor {b} has a fingerprint in {RECORD}, "
            f"and they do not both have {CHECKPOINTS}/{LAST} (or {CHECKPOINTS}/{alias('last', '')}/)"
        )
    if sa.get("fingerprint") != sb.get("fingerprint"):
        found.append(f"fingerprints differ: {sa.get('fingerprint')} vs {sb.get('fingerprint')}")
    divergence = first_divergence(read_history(a), read_history(b))
    if divergence:
        found.append(divergence)
    if both_kept_state:
        tensors = tensor_differences(*final_states(la, lb))
        if tensors:
            found.append(f"{len(tensors)} entries of the final state differ: " + ", ".join(tensors))
    return found


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run's last checkpoint: its file, or its sharded directory; None where it kept neither."""
    file = RunLayout(run_dir).last
    if file.is_file():
        return file
    directory = file.with_name(alias("last", ""))
    return directory if directory.is_dir() and sharded.is_checkpoint_directory(directory) else None


def final_states(a: Path, b: Path) -> tuple[dict, dict]:
    """Both last checkpoints, their tensors whole: a directory's shards read into this process,
    and, against a file, the file's optimizer state keyed by the directory's parameter names."""
    state_a, state_b = final_state(a), final_state(b)
    if a.is_dir() or b.is_dir():
        from framework.checkpoint import convert  # torch.distributed.checkpoint: only where a directory is met

        return convert.comparable(state_a, state_b)
    return state_a, state_b


def final_state(path: Path) -> dict:
    if path.is_dir():  # checked against its checksums before anything in it is read
        return storage.for_folder(path.parent).read(path.name)[0]
    state = safe_load(path)
    if not isinstance(state, dict):
        raise CannotCompare(f"{path} holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not RunLayout(run).record.is_file() or not RunLayout(run).history.is_file():
            print(f"Error: {run} is not a finished run directory (no {RECORD} / {HISTORY})", file=sys.stderr)
            return 2
    try:
        found = compare(args.run_a, args.run_b)
    except (CannotCompare, CheckpointError, OSError) as e:  # a damaged file: not a difference, an error
        print(f"Error: cannot compare: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not found:
        print(f"identical: {args.run_a} and {args.run_b} (fingerprint, metrics history and final state)")
        return 0
    print(f"different: {args.run_a} vs {args.run_b}")
    for line in found:
        print(f"  - {line}")
    for reason in why_runs_differ([read_summary(run) for run in (args.run_a, args.run_b)]):
        print(f"  possible cause: {reason}")
    return 1


if __name__ == "__main__":
    exit_with(main)
