"""Checkpoint tools: look into, check, compare, export, convert and migrate checkpoints.

    python -m framework.ckpt inspect PATH [--config]   what a checkpoint holds; --config: its config YAML only
    python -m framework.ckpt verify PATH|RUN_DIR       check every checkpoint of a checkpoints folder
    python -m framework.ckpt diff A B                  config, counters and tensors that differ
    python -m framework.ckpt export PATH OUT [--weights ema|raw]
                                                       model-only weights and config (.pt or .safetensors)
    python -m framework.ckpt convert SRC OUT           a sharded checkpoint directory into one file, or
                                                       a file into a directory (framework/checkpoint/convert.py)
    python -m framework.ckpt migrate SRC DST [OVERRIDES] [--unpickle-numpy SRC]
                                                       an older file of ours, or another program's
                                                       (framework/checkpoint/migrate.py)

Every file is read with torch.load(weights_only=True) and checked (framework.checkpoint.io's
load_checked: its size and xxh3 against index.json, or, where the index does not describe it,
every record of its archive against the CRC32 listed for it; then its format, keys and types;
verify also compares the sha256 index.json lists): nothing in a file is ever run, and a file
that cannot be used is refused the same way by every command.

PATH may be a file or a sharded checkpoint's directory (trainer.strategy=fsdp), told apart by
what it is, not by its name. A directory is read as a resume reads it: every file's size and
xxh3 (verify: and sha256) against index.json's entry or its own checksums.json before
anything in it is read, `.metadata` with DCP's own classes only, train_state.pt weights_only.
diff, export and convert read its tensors whole into this one process.

inspect, verify and export take a run's remote copy (checkpoint.remote) too: its URL, or one
checkpoint's in it (s3://bucket/runs/r1/last.pt), read by the remote index (framework/cli/ckpt_remote.py).

Exit codes (a problem is said in one line on stderr, `Error: ...`, never as a traceback):
  0  ok, or identical (diff)
  1  diff: the files differ
  2  usage: a wrong argument (argparse's own), an export extension other than .pt or
     .safetensors, an export over an existing file without --force, an export of the
     moving average from a checkpoint that has none
  3  no such file, not a regular file (a named pipe is never opened), or one that cannot be read or written;
     a URL's store that does not answer
  4  damaged: torn, truncated, not a torch file, fails its checksum, wrong keys or types
  5  unsafe: it pickles code or objects, so it needs more than torch.load(weights_only=True)
  6  foreign: it loads safely but is not a checkpoint of this framework (no `meta`)
  7  newer: written in a checkpoint format newer than this framework reads
  8  migrate: the file does not fit the experiment its overrides describe
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.atomic import fsync_dir, new_file_mode
from framework.checkpoint import io, migrate, remote_folder, sharded, storage
from framework.checkpoint.io import (
    CheckpointError,
    DamagedCheckpoint,
    ForeignCheckpoint,
    NewerCheckpoint,
    UnsafeCheckpoint,
)
from framework.cli import exit_with
from framework.config.errors import ConfigError
from framework.config.resolved import config_from_text, flatten
from framework.engine.ema import N_AVERAGED, without_count
from framework.file_kind import not_a_regular_file
from framework.runs import layout

OK = 0
DIFFERENT = 1
USAGE = 2
UNREADABLE = 3
DAMAGED = 4
UNSAFE = 5
FOREIGN = 6
NEWER = 7
NOT_FITTING = 8

EXIT_CODES = f"""exit codes:
  {OK}  ok, or identical (diff)
  {DIFFERENT}  diff: the files differ
  {USAGE}  usage: a wrong argument
  {UNREADABLE}  no such file, not a regular file, or one that cannot be read or written (a URL: no answer)
  {DAMAGED}  damaged: torn, truncated, not a torch file, fails its checksum, wrong keys or types
  {UNSAFE}  unsafe: pickles code or objects (needs more than torch.load(weights_only=True))
  {FOREIGN}  foreign: loads safely but is not a checkpoint of this framework
  {NEWER}  newer: a checkpoint format newer than this framework reads
  {NOT_FITTING}  migrate: the file does not fit the experiment its overrides describe
  141  the reader of the output went first (| head): ended quietly, as SIGPIPE ends shell tools
"""

# Top-level keys diff does not compare: meta holds timestamps and hosts, which always differ;
# integrity (older files' record of their contents) and metrics_lines follow from the rest;
# config is compared key by key on its own.
NOT_COMPARED = ("meta", "integrity", "metrics_lines", "config")
# The order diff reports in: the loop's counters first, then the state that holds tensors.
COUNTERS = ("epoch", "global_step", "loader_state")
STATE_KEYS = (
    "model_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "rng_state",
    "cuda_rng_state",
    "numpy_rng_state",
    "python_rng_state",
    "rng_per_rank",
)
# A value longer than this, in characters, is summarized (Python's random state: 625 numbers).
LONGEST_SHOWN = 80
MIGRATE_HINT = "python -m framework.ckpt migrate SRC DST model=... optimizer=..."
HELP_WIDTH = 100
REMOTE_ONE = "the URL of one checkpoint in a run's remote copy (s3://bucket/runs/r1/last.pt, a sharded one's .../last)"
# Stands for a key or item that one of two files does not have.
ABSENT = object()


class FileProblem(Exception):
    """A path that does not exist or cannot be read or written (not a checkpoint's own fault)."""


class UsageProblem(Exception):
    """Arguments that argparse accepts but the command cannot act on."""


class Named(NamedTuple):
    """The checkpoint a command names, on the local disk."""

    path: Path
    store: storage.CheckpointStore | None  # what reads it (None: its folder's)
    shown: object  # as messages name it: the path, or the URL it was downloaded from
    fetched: str = ""  # how it was brought here and checked, in words, where it was not here already


@contextmanager
def checkpoint_named(given: str) -> Iterator[Named]:
    """A path as it is; a remote checkpoint's URL downloaded, checked, into a temporary folder
    for the command's time (framework/cli/ckpt_remote.py)."""
    if not remote_folder.is_url(given):
        yield Named(Path(given), None, Path(given))
        return
    from framework.cli import ckpt_remote  # fsspec and the store's library: only for a URL

    with ckpt_remote.downloaded(given) as named:
        yield named


def exit_code_for(error: Exception) -> int:
    # Subclasses first: every checkpoint error is a CheckpointError.
    codes = (
        (UsageProblem, USAGE),
        (FileProblem, UNREADABLE),
        (OSError, UNREADABLE),
        (UnsafeCheckpoint, UNSAFE),
        (ForeignCheckpoint, FOREIGN),
        (NewerCheckpoint, NEWER),
        (migrate.DoesNotFit, NOT_FITTING),
        (DamagedCheckpoint, DAMAGED),
        # A config that does not parse, and any other reason a file cannot be used: it is not
        # one this framework wrote as it is.
        (ConfigError, DAMAGED),
        (CheckpointError, DAMAGED),
    )
    return next(code for kind, code in codes if isinstance(error, kind))


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---- reading a file --------------------------------------------------------------------------


def load(path: Path, store: storage.CheckpointStore | None = None, sha256: bool = False) -> tuple[dict, str]:
    """The checkpoint at `path`, a file or a sharded checkpoint's directory, read through the
    store of its folder: checked against what its index lists for it (if any; a directory's
    files, else against its own checksums.json); with `sha256`, its sha256 too. Returns the
    checkpoint (a directory's tensors stay on disk: sharded.Shards) and the check it passed, in words."""
    if path.is_dir():
        if not sharded.is_checkpoint_directory(path):
            raise FileProblem(
                f"{path} is a folder, not a sharded checkpoint's directory (it has no {sharded.MANIFEST} "
                f"nor {sharded.METADATA})"
            )
    else:
        problem = not_a_regular_file(path)
        if problem:
            raise FileProblem(problem)
        # Unreadable (permissions) is said as such, not as a file that does not load.
        with open(path, "rb"):
            pass
    store = storage.for_folder(path.parent) if store is None else store
    try:
        return store.read(path.name, sha256=sha256)
    except ForeignCheckpoint as e:
        raise ForeignCheckpoint(foreign_message(e, path)) from e
    except UnsafeCheckpoint as e:
        if all(migrate.NUMPY_GLOBALS.fullmatch(name) for name in e.needs):  # np.random.get_state(), most likely
            hint = f"; if it is another program's training checkpoint: {MIGRATE_HINT} --unpickle-numpy SRC"
            raise UnsafeCheckpoint(str(e) + hint, e.needs) from e
        raise


def foreign_message(error: ForeignCheckpoint, path: Path) -> str:
    """The error, plus what the file holds: another program's training checkpoint can be imported."""
    # It loaded safely a moment ago (that is how it was found to be foreign): loading it again
    # runs nothing. Not memory-mapped: other programs may write torch's older, non-zip format.
    content = io.safe_load(path / sharded.REST if path.is_dir() else path)
    if isinstance(content, dict) and "model_state_dict" in content:
        return (
            f"{error}; it has a model_state_dict, so it looks like another program's training checkpoint: "
            f"it can be imported with `{MIGRATE_HINT}`"
        )
    if isinstance(content, dict):
        keys = ", ".join(map(str, list(content)[:8])) + (", ..." if len(content) > 8 else "")
        return f"{error}; it holds a dict with keys {keys or '(none)'}"
    return f"{error}; it holds a {type(content).__name__}"


def parsed_config(ckpt: dict, path: Path) -> dict:
    """The embedded config as a plain, resolved tree."""
    cfg = config_from_text(ckpt["config"], str(path))
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: its config does not resolve ({one_line(e)})") from e


# ---- inspect ---------------------------------------------------------------------------------


def inspect_command(args) -> int:
    with checkpoint_named(args.path) as named:
        return inspect_checkpoint(named, args.config)


def inspect_checkpoint(named: Named, config_only: bool) -> int:
    path = named.path
    ckpt, passed = load(path, named.store)
    if config_only:
        # The text alone, so that it can be redirected into a file.
        sys.stdout.write(ckpt["config"] if ckpt["config"].endswith("\n") else ckpt["config"] + "\n")
        return OK
    cfg = parsed_config(ckpt, path)
    print(f"{named.shown}  (checked: {named.fetched}{passed})")
    lines = describe(ckpt, cfg)
    if path.is_dir():
        lines.insert(0, ("stored as", directory_layout(path)))
    for name, value in lines:
        print(f"  {name:<15} {value}")
    print("  components")
    for line in component_lines(ckpt):
        print(f"    {line}")
    print("  config")
    for name, value in config_summary(cfg):
        print(f"    {name:<10} {value}")
    return OK


def describe(ckpt: dict, cfg: dict) -> list[tuple[str, str]]:
    meta = ckpt["meta"]
    loader = ckpt.get("loader_state")
    position = f"epoch {loader['epoch']}, batch {loader['position']}" if loader else "-"
    lines = [
        ("kind", "model (weights and config only: cannot resume)" if meta.get("kind") == "model" else "full"),
        ("epoch", str(ckpt["epoch"])),
        ("global step", str(ckpt["global_step"])),
        ("data position", position),
        ("monitored", monitored(ckpt, cfg)),
        ("world size", str(meta.get("world_size", "-"))),
        ("determinism", str(meta.get("determinism", "-"))),
        ("versions", versions(meta)),
    ]
    if "origin" in meta:
        lines.append(("origin", origin(meta)))
    if isinstance(meta.get("converted_from"), dict):  # framework/checkpoint/convert.py
        source = meta["converted_from"]
        form = "sharded checkpoint" if source.get("form") == "sharded" else source.get("form", "checkpoint")
        lines.append(("converted", f"from the {form} {source.get('path', '(path not recorded)')}"))
    average = moving_average(ckpt, cfg)
    if average:
        lines.append(("ema", average))
    return lines


def moving_average(ckpt: dict, cfg: dict) -> str | None:
    """The moving average of the weights a file holds (or an export of it is), in words; None
    where there is none."""
    ema = (cfg.get("trainer") or {}).get("ema") or {}
    decay = ema.get("decay", "-")
    if ckpt.get("ema_state_dict") is not None:
        used = "evaluated with" if ema.get("evaluate") else "not evaluated with (trainer.ema.evaluate false)"
        return f"{int(ckpt['ema_state_dict'][N_AVERAGED])} updates averaged, decay {decay}; {used}"
    if ckpt["meta"].get("weights") == "ema":
        return f"model_state_dict is the moving average ({ckpt['meta'].get(N_AVERAGED, '-')} updates, decay {decay})"
    return None


def monitored(ckpt: dict, cfg: dict) -> str:
    monitor = (cfg.get("checkpoint") or {}).get("monitor")
    if monitor is None:
        return "nothing (checkpoint.monitor is null)"
    best = ckpt.get("best_metric")
    mode = (cfg.get("checkpoint") or {}).get("mode", "?")
    return f"{monitor} ({mode}), best {'-' if best is None else best}"


def versions(meta: dict) -> str:
    names = ("framework", "torch", "python", "numpy", "cuda", "cudnn")
    # None: the version was looked up and there is none (no CUDA); "-": the file does not say.
    found = [f"{name} {meta.get(f'{name}_version', '-') or 'none'}" for name in names]
    upgraded = meta.get("upgraded_from")
    fmt = f"format {meta.get('format_version')}"
    if upgraded:
        fmt += f" (upgraded from format {', '.join(map(str, upgraded))})"
    return ", ".join([*found, fmt])


def origin(meta: dict) -> str:
    imported = meta.get("imported")
    if not isinstance(imported, dict):
        return str(meta["origin"])
    return f"{meta['origin']} from {imported.get('source', '(source not recorded)')}"


def directory_layout(path: Path) -> str:
    """A sharded checkpoint's directory in words: its shard files, the ranks that wrote them, its bytes."""
    names = os.listdir(path)
    shards = [name for name in names if name.startswith("__") and name.endswith(".distcp")]
    ranks = {name[2:].split("_", 1)[0] for name in shards}
    size = sum((path / name).stat().st_size for name in names)
    return (
        f"a sharded directory: {len(shards)} shard file{'' if len(shards) == 1 else 's'} written by "
        f"{len(ranks)} rank{'' if len(ranks) == 1 else 's'}; {len(names)} files, {size:,} bytes"
    )


def tensor_totals(value: object) -> tuple[int, int, int]:
    """(tensors, elements, bytes) in a nested dict/list, or in a directory's shards (from its metadata)."""
    if isinstance(value, torch.Tensor):
        return 1, value.numel(), value.numel() * value.element_size()
    if isinstance(value, sharded.Shards):
        return len(value.tensors()), sum(math.prod(shape) for shape in value.shapes().values()), value.tensor_bytes()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        parts = [tensor_totals(v) for v in value]
        return tuple(sum(p[i] for p in parts) for i in range(3))
    return 0, 0, 0


def component_lines(ckpt: dict) -> list[str]:
    rows = [(key, *tensor_totals(value)) for key, value in ckpt.items()]
    rows = [row for row in rows if row[1] > 0]
    width = max((len(row[0]) for row in rows), default=0)
    return [
        f"{key:<{width}}  {count:>4} {'tensor ' if count == 1 else 'tensors'}  {values:>13,} values  "
        f"{human_bytes(size):>10}"
        for key, count, values, size in rows
    ]


def human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"


def config_summary(cfg: dict) -> list[tuple[str, str]]:
    def target(*keys: str) -> str:
        node = cfg
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return "-" if node is None else str(node)

    return [
        ("model", target("model", "_target_")),
        ("optimizer", target("optimizer", "_target_")),
        ("scheduler", target("scheduler", "_target_")),
        ("data", target("data", "source", "_target_")),
        ("seed", target("seed")),
    ]


# ---- verify ----------------------------------------------------------------------------------


def verify_command(args) -> int:
    if remote_folder.is_url(args.path):
        from framework.cli import ckpt_remote  # fsspec and the store's library: only for a URL

        return ckpt_remote.verify(args.path)
    store, names = files_to_verify(Path(args.path))
    codes = []
    for name in names:
        code, line = verify_one(store.where(name), store)
        codes.append(code)
        print(line)
    bad = sum(code != OK for code in codes)
    noun = "checkpoint" if any(store.where(name).is_dir() for name in names) else "file"
    files = f"{len(codes)} {noun}{'' if len(codes) == 1 else 's'}"
    print(f"{files}: {bad} bad" if bad else f"{files}: {len(codes)} ok")
    return next((code for code in codes if code != OK), OK)


def files_to_verify(path: Path) -> tuple[storage.CheckpointStore, list[str]]:
    """The store and the names to check, in name order: a file or a sharded checkpoint's
    directory alone; or every checkpoint of a checkpoints folder (a run directory's
    checkpoints/) and every one its index lists."""
    if not os.path.lexists(path):
        raise FileProblem(f"no such file or directory: {path}")
    if path.is_dir() and sharded.is_checkpoint_directory(path):
        return storage.for_folder(path.parent), [path.name]
    if not path.is_dir():
        problem = not_a_regular_file(path)
        if problem:
            raise FileProblem(problem)
        return storage.for_folder(path.parent), [path.name]
    store = storage.for_folder(layout.checkpoints_in(path))
    names = store.names()
    if not names:
        files = layout.CHECKPOINT_FILES
        raise FileProblem(f"no checkpoint files ({files}) in {store}, and no {layout.INDEX} listing any")
    return store, names


def verify_one(path: Path, store: storage.CheckpointStore) -> tuple[int, str]:
    entry = store.entry(path.name)
    if not path.exists() and entry is not None:
        what = "directory" if "files" in entry else "file"  # a sharded checkpoint's entry lists its files
        return UNREADABLE, f"BAD   {path.name}  listed in {layout.INDEX}, but the {what} is missing"
    try:
        ckpt, passed = load(path, store, sha256=True)
        check_shards_named(ckpt)
    except (CheckpointError, FileProblem, OSError) as e:
        return exit_code_for(e), f"BAD   {path.name}  {one_line(e)}"
    return OK, f"ok    {path.name}  epoch {ckpt['epoch']} step {ckpt['global_step']}  (checked: {passed})"


def check_shards_named(ckpt: dict) -> None:
    """Every byte range a directory's `.metadata` points at lies in one of its shard files (whose
    names sharded.read_metadata checked), and its non-tensor values load with weights_only. The
    tensors are read by a resume, not here: a sharded checkpoint can be larger than this
    process's memory."""
    shards = next((value for value in ckpt.values() if isinstance(value, sharded.Shards)), None)
    if shards is None:
        return
    from framework.checkpoint import dcp_io  # torch.distributed.checkpoint: a second to import

    dcp_io.read_values(shards.folder, shards.metadata)
    for where in shards.metadata.storage_data.values():
        file = shards.folder / where.relative_path
        size = file.stat().st_size if file.is_file() else None
        if size is None or where.offset + where.length > size:
            held = "is not there" if size is None else f"has {size:,} bytes"
            raise DamagedCheckpoint(
                f"{shards.folder / sharded.METADATA} points at bytes {where.offset:,} to "
                f"{where.offset + where.length:,} of {where.relative_path}, which {held}"
            )


# ---- diff ------------------------------------------------------------------------------------


def diff_command(args) -> int:
    path_a, path_b = Path(args.a), Path(args.b)
    ckpt_a, _ = load(path_a)
    ckpt_b, _ = load(path_b)
    if holds_shards(ckpt_a) or holds_shards(ckpt_b):
        from framework.checkpoint import convert  # torch.distributed.checkpoint: only where a directory is met

        ckpt_a, ckpt_b = convert.comparable(ckpt_a, ckpt_b)
    config_lines = config_differences(parsed_config(ckpt_a, path_a), parsed_config(ckpt_b, path_b))
    pairs = paired_leaves(ckpt_a, ckpt_b)
    value_lines = [value_difference(name, a, b) for name, a, b in pairs if not is_tensor_pair(a, b)]
    value_lines = [line for line in value_lines if line]
    tensor_pairs = [(name, a, b) for name, a, b in pairs if is_tensor_pair(a, b)]
    tensor_lines = [line for line in (tensor_difference(*pair) for pair in tensor_pairs) if line]
    if not (config_lines or value_lines or tensor_lines):
        print("identical")
        return OK
    print(f"config: {len(config_lines)} keys differ" if config_lines else "config: identical")
    print_indented(config_lines)
    print(f"values: {len(value_lines)} differ" if value_lines else "values: identical")
    print_indented(value_lines)
    counted = f"{len(tensor_lines)} of {len(tensor_pairs)} differ"
    print(f"tensors: {counted}" if tensor_lines else f"tensors: identical ({len(tensor_pairs)})")
    print_indented(tensor_lines)
    return DIFFERENT


def holds_shards(ckpt: dict) -> bool:
    return any(isinstance(value, sharded.Shards) for value in ckpt.values())


def print_indented(lines: list[str]) -> None:
    for line in lines:
        print(f"  {line}")


def config_differences(cfg_a: dict, cfg_b: dict) -> list[str]:
    flat_a, flat_b = flatten(cfg_a), flatten(cfg_b)
    keys = sorted(flat_a.keys() | flat_b.keys())
    return [
        f"{key}: {shown(flat_a.get(key, ABSENT))} -> {shown(flat_b.get(key, ABSENT))}"
        for key in keys
        if flat_a.get(key, ABSENT) != flat_b.get(key, ABSENT)
    ]


def shown(value: object) -> str:
    return "(absent)" if value is ABSENT else str(value)


def paired_leaves(ckpt_a: dict, ckpt_b: dict) -> list[tuple[str, object, object]]:
    """(dotted name, value in A, value in B) for every leaf of the compared keys: the counters,
    any other plain values, then the state that holds tensors. ABSENT where a file lacks it."""
    present = [key for key in {**ckpt_a, **ckpt_b} if key not in NOT_COMPARED]
    others = sorted(key for key in present if key not in COUNTERS + STATE_KEYS)
    order = [key for key in (*COUNTERS, *others, *STATE_KEYS) if key in present]
    pairs = []
    for key in order:
        walk(key, ckpt_a.get(key, ABSENT), ckpt_b.get(key, ABSENT), pairs)
    return pairs


def walk(name: str, a: object, b: object, out: list) -> None:
    """Down dicts and lists of containers or tensors, to their leaves; a list of plain values
    (Python's random state) is one leaf."""
    if isinstance(a, dict) and isinstance(b, dict):
        # In the files' own order (a model's layers in order), then what only B has.
        for key in [*a, *(k for k in b if k not in a)]:
            walk(f"{name}.{key}", a.get(key, ABSENT), b.get(key, ABSENT), out)
    elif is_nested_list(a) and is_nested_list(b):
        for i in range(max(len(a), len(b))):
            walk(f"{name}.{i}", a[i] if i < len(a) else ABSENT, b[i] if i < len(b) else ABSENT, out)
    else:
        out.append((name, a, b))


def is_nested_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple, torch.Tensor)) for v in value)


def is_tensor_pair(a: object, b: object) -> bool:
    return isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)


def value_difference(name: str, a: object, b: object) -> str | None:
    if same_value(a, b):
        return None
    same_length_lists = isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
    if same_length_lists and len(str(a)) > LONGEST_SHOWN:
        differing = sum(not same_value(x, y) for x, y in zip(a, b))
        return f"{name}: {differing:,} of {len(a):,} values differ"
    return f"{name}: {shown_value(a)} -> {shown_value(b)}"


def same_value(a: object, b: object) -> bool:
    # A NaN loss in both files is the same loss.
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or (type(a) is type(b) and a == b)


def shown_value(value: object) -> str:
    """A value in a few words: a section that only one file has is summarized, not printed."""
    if isinstance(value, (dict, list, tuple)):
        tensors = tensor_totals(value)[0]
        if tensors:
            return f"({type(value).__name__} of {len(value):,} entries, {tensors} tensors)"
        if len(str(value)) > LONGEST_SHOWN:
            return f"({type(value).__name__} of {len(value):,} entries)"
    return shown(value)


def tensor_difference(name: str, a: object, b: object) -> str | None:
    if a is ABSENT:
        return f"{name}: only in B ({tensor_kind(b)})"
    if b is ABSENT:
        return f"{name}: only in A ({tensor_kind(a)})"
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return f"{name}: {tensor_kind(a)} -> {tensor_kind(b)}"
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{name}: {tensor_kind(a)} -> {tensor_kind(b)}"
    if a.is_floating_point() or a.is_complex():
        return float_difference(name, a, b)
    differing = int((a != b).sum())
    return f"{name}: {differing:,} of {a.numel():,} values differ ({tensor_kind(a)})" if differing else None


def float_difference(name: str, a: torch.Tensor, b: torch.Tensor) -> str | None:
    wide = torch.complex128 if a.is_complex() else torch.float64
    x, y = a.to(wide), b.to(wide)
    # NaN in both files at one place is no difference; NaN in one only is (shown as nan).
    both_nan = x.isnan() & y.isnan()
    if bool(((x == y) | both_nan).all()):
        return None
    gap = (x - y).abs().masked_fill(both_nan, 0)
    return f"{name}: max abs difference {float(gap.max()):.6g} ({tensor_kind(a)})"


def tensor_kind(value: object) -> str:
    if not isinstance(value, torch.Tensor):
        return shown_value(value)
    return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"


# ---- export ----------------------------------------------------------------------------------

EXPORT_EXTENSIONS = (layout.SUFFIX, ".safetensors")


def export_command(args) -> int:
    out = Path(args.out)
    if out.suffix not in EXPORT_EXTENSIONS:
        raise UsageProblem(
            f"cannot export to {out}: the extension {out.suffix or '(none)'!r} is neither "
            f"{' nor '.join(EXPORT_EXTENSIONS)}"
        )
    if out.exists() and not args.force:
        raise UsageProblem(f"{out} exists; pass --force to replace it")
    with checkpoint_named(args.path) as named:
        return export_checkpoint(named, out, args.weights)


def export_checkpoint(named: Named, out: Path, weights: str | None) -> int:
    source = named.path
    ckpt, _ = load(source, named.store)
    weights = weights or weights_evaluated(ckpt, source)
    if weights == "raw" and holds_shards(ckpt):
        from framework.checkpoint import convert  # torch.distributed.checkpoint: only where a directory is met

        ckpt = convert.whole(ckpt, ("model_state_dict",))
    payload = model_payload(ckpt, weights, weights_to_export(ckpt, weights, source))
    try:
        if out.suffix == layout.SUFFIX:
            io.write(payload, out)
        else:
            write_safetensors(payload, out)
    except CheckpointError as e:  # io.write says a full disk or an unwritable folder this way
        raise FileProblem(one_line(e)) from e
    count, values, _ = tensor_totals(payload["model_state_dict"])
    chosen = "the moving average" if weights == "ema" else "the raw weights"
    print(
        f"wrote {out}: model-only, {count} tensors, {values:,} values, {out.stat().st_size:,} bytes, {chosen} "
        f"(from {named.shown}, epoch {payload['epoch']} step {payload['global_step']})"
    )
    return OK


def held_weights(ckpt: dict) -> str:
    """What model_state_dict is: the raw weights, except in an export of the moving average."""
    return ckpt["meta"].get("weights", "raw")


def weights_evaluated(ckpt: dict, path: Path) -> str:
    """The weights the run validated and tested with: its moving average where it has one and
    its config's trainer.ema.evaluate is true, else the raw weights (an export: the ones it holds)."""
    if ckpt.get("ema_state_dict") is None:
        return held_weights(ckpt)
    ema = (parsed_config(ckpt, path).get("trainer") or {}).get("ema") or {}
    return "ema" if ema.get("evaluate", True) else "raw"


def weights_to_export(ckpt: dict, weights: str, path: Path) -> dict:
    """The state dict of the chosen weights ("ema" or "raw"), under the plain model's keys."""
    if weights == "ema" and ckpt.get("ema_state_dict") is not None:
        return without_count(ckpt["ema_state_dict"])
    if weights == held_weights(ckpt):
        return ckpt["model_state_dict"]
    if weights == "ema":
        raise UsageProblem(
            f"{path} holds no moving average of the weights (its run had trainer.ema.decay null, or it is "
            "an export of the raw weights): export them with --weights raw"
        )
    raise UsageProblem(f"{path} is an export of the moving average: the raw weights are not in it")


def model_payload(ckpt: dict, weights: str, state_dict: dict) -> dict:
    """What a model-only checkpoint holds (io.MODEL_KEYS), the source's meta marked model-only
    and naming the weights ("raw" or "ema", with the average's count of updates)."""
    meta = {k: v for k, v in ckpt["meta"].items() if k != N_AVERAGED}
    meta.update(kind="model", weights=weights)
    if weights == "ema":
        average = ckpt.get("ema_state_dict")
        meta[N_AVERAGED] = int(average[N_AVERAGED]) if average is not None else ckpt["meta"].get(N_AVERAGED)
    return {
        "epoch": ckpt["epoch"],
        "global_step": ckpt["global_step"],
        "model_state_dict": state_dict,
        "config": ckpt["config"],
        "meta": meta,
    }


def write_safetensors(payload: dict, out: Path) -> None:
    """The weights, with the config and meta as safetensors metadata (text only), written
    atomically: a temporary file beside `out`, fsynced, renamed over it, the folder fsynced."""
    from safetensors.torch import save_file

    not_tensors = [k for k, v in payload["model_state_dict"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UsageProblem(
            f"model_state_dict holds values that are not tensors ({', '.join(not_tensors)}), "
            "which a .safetensors file cannot hold: export to .pt"
        )
    # Contiguous copies with storage of their own: safetensors refuses tensors that share memory.
    tensors = {k: v.detach().contiguous().clone() for k, v in payload["model_state_dict"].items()}
    metadata = {
        "format": "framework-model",
        "config": payload["config"],
        "meta": json.dumps(payload["meta"]),
        "epoch": str(payload["epoch"]),
        "global_step": str(payload["global_step"]),
    }
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    io.check_room(folder, io.expected_size(tensors), f"to write {out}")
    tmp = folder / layout.temporary(out.name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, new_file_mode())  # safetensors creates it 0600; every other file follows the umask
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)


# ---- convert ---------------------------------------------------------------------------------
def convert_command(args) -> int:
    source, out = Path(args.src), Path(args.out)
    if not os.path.lexists(source):
        raise FileProblem(f"no such file or directory: {source}")
    to_file = source.is_dir()  # by what it is, not by its name
    if to_file and out.suffix != layout.SUFFIX:
        raise UsageProblem(f"{source} is a sharded checkpoint's directory: it converts to one file, OUT ending in .pt")
    if not to_file and out.suffix == layout.SUFFIX:
        raise UsageProblem(
            f"{source} is a file: it converts to a sharded checkpoint's directory, OUT named without .pt"
        )
    if os.path.lexists(out):
        raise UsageProblem(f"{out} exists already: give another OUT (convert never overwrites)")
    ckpt, _ = load(source)
    if ckpt["meta"].get("kind") == "model":
        raise UsageProblem(f"{source} is model-only (weights and config): convert takes a full checkpoint")
    from framework.checkpoint import convert  # torch.distributed.checkpoint: only here

    try:
        (convert.to_file if to_file else convert.to_directory)(ckpt, source, out)
    except CheckpointError as e:
        if isinstance(e.__cause__, OSError):  # a full disk, an unwritable folder (io.write's words)
            raise FileProblem(one_line(e)) from e
        raise
    strategy = convert.FILE_STRATEGY if to_file else convert.DIRECTORY_STRATEGY
    form = "one file" if to_file else "a sharded checkpoint's directory"
    print(f"wrote {out}: {form} (trainer.strategy={strategy}), epoch {ckpt['epoch']} step {ckpt['global_step']}")
    print(f"  resume it with: python -m framework resume={out} {resumed_on(ckpt['meta'].get('world_size', 1))}")
    return OK


def resumed_on(world_size: int) -> str:
    """How a checkpoint that `world_size` processes wrote resumes: the run checks its world size."""
    exactly = "(one process)" if world_size == 1 else f"trainer.processes={world_size}"
    return (
        f"{exactly}; on another number of processes, add allow_config_changes=true (it then goes on from "
        "the model, optimizer and scheduler, not bit for bit)"
    )


# ---- migrate ---------------------------------------------------------------------------------
def migrate_command(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not os.path.lexists(src):
        raise FileProblem(f"no such file or folder: {src}")
    problem = None if src.is_dir() else not_a_regular_file(src)
    if problem:
        raise FileProblem(problem)
    if dst.exists():
        raise UsageProblem(f"{dst} exists already: give another DST (migrate never overwrites)")
    unpickle_numpy = Path(args.unpickle_numpy) if args.unpickle_numpy else None
    try:
        said = migrate.migrate(src, dst, args.overrides, unpickle_numpy, args.epochs_done)
    except ConfigError as e:  # the overrides do not compose, or a value in them is refused
        raise UsageProblem(str(e)) from e
    print(said)
    return OK


# ---- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m framework.ckpt",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def command(name: str, run, summary: str, details: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            # Wrapped here: the raw formatter keeps the exit code table's lines as they are.
            description=textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {details}", HELP_WIDTH),
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run)
        return sub

    inspect = command(
        "inspect",
        inspect_command,
        "what a checkpoint holds",
        "Its counters, data position, monitored metric, versions, the size of each component, and "
        "a summary of its config; a sharded checkpoint's directory: its shard files and the ranks that "
        "wrote them too. With --config, the embedded config YAML alone.",
    )
    inspect.add_argument(
        "path", metavar="PATH", help=f"a checkpoint file or a sharded checkpoint's directory, or {REMOTE_ONE}"
    )
    inspect.add_argument("--config", action="store_true", help="print the embedded config YAML only, whole")

    verify = command(
        "verify",
        verify_command,
        "check every checkpoint of a run",
        "Each .pt file (in name order): its size, xxh3 and sha256 against index.json when it lists "
        "the file, else every record of its archive against its CRC32; loaded with weights_only; its "
        "format, keys and types. Each sharded checkpoint's directory: every file's size, xxh3 and sha256 "
        "against index.json's entry (else its checksums.json), no file missing or unlisted, .metadata "
        "(DCP's classes only) pointing into its own shard files, train_state.pt as a file is. Every "
        "checkpoint the index lists must be there. One line per checkpoint, then a count.",
    )
    verify.add_argument(
        "path",
        metavar="PATH",
        help="a checkpoint file or directory, a folder of checkpoints, or a run directory; a run's remote copy "
        "(checkpoint.remote's URL: every object of every checkpoint its remote index lists, against the "
        f"size and sha256 listed), or {REMOTE_ONE}",
    )

    diff = command(
        "diff",
        diff_command,
        "what differs between two checkpoints",
        "Config keys, counters and other values, and tensors: the max abs difference of floating "
        "point ones, how many values differ in integer ones. meta (times, hosts) is not compared. "
        "A sharded checkpoint's directory is read whole into this process; against a file, the file's "
        "optimizer state (keyed by parameter number) is compared under the directory's parameter names.",
    )
    diff.add_argument("a", metavar="A", help="a checkpoint file or a sharded checkpoint's directory")
    diff.add_argument("b", metavar="B", help="another one")

    export = command(
        "export",
        export_command,
        "the model's weights and config, for inference or fine-tuning",
        "OUT.pt: a model-only checkpoint that torch.load(weights_only=True) reads. "
        "OUT.safetensors: the weights, with config and meta in its metadata. Either holds one set "
        "of weights under the plain model's keys (--weights): meta.weights says which. From a sharded "
        "checkpoint's directory, the model's shards are read whole into this process.",
    )
    export.add_argument(
        "path", metavar="PATH", help=f"a checkpoint file or a sharded checkpoint's directory, or {REMOTE_ONE}"
    )
    export.add_argument("out", metavar="OUT", help="the file to write, ending in .pt or .safetensors")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    export.add_argument(
        "--weights",
        choices=("ema", "raw"),
        help="ema: the moving average of the weights (trainer.ema); raw: the weights the optimizer trained. "
        "Default: the weights the run validated and tested with, which its val/test metrics and best.pt "
        "describe: ema where the checkpoint has an average and its config's trainer.ema.evaluate is true, "
        "else raw",
    )

    convert = command(
        "convert",
        convert_command,
        "a sharded checkpoint's directory into one file, or a file into a directory",
        "SRC a directory (trainer.strategy=fsdp): OUT.pt, one file that a run with trainer.strategy=ddp "
        "resumes from. SRC a file: OUT, a directory that a run with trainer.strategy=fsdp resumes from, "
        "on any number of processes. The model and optimizer its config names are built, the state "
        "loaded into them whole in this process, and written with every other entry as it is; meta "
        "records the conversion. The world size stays the one that trained it: resumed on another "
        "number of processes, a run needs allow_config_changes=true.",
    )
    convert.add_argument("src", metavar="SRC", help="a full checkpoint: a sharded checkpoint's directory, or a file")
    convert.add_argument("out", metavar="OUT", help="the file (.pt) or directory (no .pt) to write; never overwritten")

    migrate_ = command(
        "migrate",
        migrate_command,
        "bring a checkpoint to this framework's current format",
        "An older file of this framework: upgraded, step by step, to the current format. Another "
        "program's training checkpoint (epoch, model_state_dict, optimizer_state_dict, maybe "
        "scheduler_state_dict, loss and random streams; a folder of checkpoint_epoch_N.pt files: "
        "the highest N): imported into a full checkpoint of the experiment that OVERRIDES "
        "describe, which a run resumes from with resume=DST, not bit for bit. Its weights must "
        "fit that model and its optimizer state that optimizer.",
    )
    migrate_.add_argument("src", metavar="SRC", help="a checkpoint file, or a folder of numbered ones")
    migrate_.add_argument("dst", metavar="DST", help="the file to write (never overwritten)")
    migrate_.add_argument(
        "overrides", metavar="OVERRIDES", nargs="*", help="as for a run, e.g. model=cnn optimizer=sgd (imports only)"
    )
    migrate_.add_argument(
        "--unpickle-numpy",
        metavar="SRC",
        help="let NumPy arrays, dtypes and scalars (what np.random.get_state() holds) be unpickled from this "
        "file, which must be SRC; nothing else beyond torch.load(weights_only=True) ever is",
    )
    migrate_.add_argument(
        "--epochs-done",
        type=int,
        metavar="N",
        help="how many epochs the imported run finished (default: the file's `epoch`, else the number in its name)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went first (`| head`): exit_with ends quietly
        raise
    except (CheckpointError, ConfigError, FileProblem, UsageProblem, OSError) as e:
        print(f"Error: {one_line(e)}", file=sys.stderr)
        return exit_code_for(e)


if __name__ == "__main__":
    exit_with(main)
