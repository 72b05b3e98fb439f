"""Saving and loading a sharded checkpoint's tensors with torch.distributed.checkpoint (DCP), with
nothing in the directory run: `.metadata` read by framework/checkpoint/sharded.py's unpickler,
every non-tensor value with torch.load(weights_only=True). Imported only where a directory is
written or its tensors loaded (DCP takes a second to import)."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from framework.checkpoint.errors import CheckpointError, DamagedCheckpoint, UnsafeCheckpoint
from framework.checkpoint.sharded import SHARDED_KEYS, read_metadata


class SafeReader(FileSystemReader):
    """DCP's file reader, given `.metadata` as MetadataUnpickler read it (`metadata`: already
    read and checked), before DCP starts: a refusal is raised as it is. Read inside DCP, a
    failure would be logged with its traceback, read again as per-rank metadata, and raised as
    an AssertionError."""

    def __init__(self, folder: Path, metadata: Metadata | None = None):
        super().__init__(folder)
        self.metadata = read_metadata(folder) if metadata is None else metadata

    def read_metadata(self, *args, **kwargs) -> Metadata:
        return self.metadata


class SafeBytes:
    """A planner's non-tensor values, read with torch.load(weights_only=True)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class SafePlanner(SafeBytes, DefaultLoadPlanner):
    """Loads into a given state dict (sharded or not)."""


class SafeFullPlanner(SafeBytes, _EmptyStateDictLoadPlanner):
    """Builds the whole state from the metadata, in one process (the tools)."""


def save(state: dict, folder: Path, group=None, no_dist: bool = False) -> None:
    """Every rank writes its shard of `state` into `folder`; `.metadata` last (DCP writes it to a
    temporary name, then renames it). Each file is fsynced."""
    dcp.save(state, storage_writer=FileSystemWriter(folder, sync_files=True), process_group=group, no_dist=no_dist)


def load_into(state: dict, folder: Path, metadata: Metadata | None = None) -> None:
    """Fill `state` (each rank's own shards, or whole tensors) in place from `folder` (whose
    `.metadata`, if read already: `metadata`)."""
    reader = SafeReader(folder, metadata)
    try:
        dcp.load(state, storage_reader=reader, planner=SafePlanner())
    except CheckpointException as e:  # a BaseException: every rank's failures, by rank
        raise refusal(e, folder) from e


def refusal(e: CheckpointException, folder: Path) -> CheckpointError:
    """What the first rank's failure to read `folder` says, in one line: a refusal of ours as it
    is; a value weights_only refuses, named (never torch's advice to load it with
    weights_only=False); anything else, damage."""
    cause = first_failure(e)
    if isinstance(cause, CheckpointError):
        return cause
    needs = re.findall(r"GLOBAL (\S+)", str(cause))[:1] if isinstance(cause, pickle.UnpicklingError) else []
    if needs:
        return UnsafeCheckpoint(
            f"{folder} needs more than torch.load(weights_only=True): a value in its shards pickles {needs[0]}. "
            "Nothing of it was run",
            needs,
        )
    lines = str(cause).strip().splitlines()
    return DamagedCheckpoint(f"cannot read the shards of {folder}: {type(cause).__name__}: {lines[0] if lines else ''}")


def first_failure(e: CheckpointException) -> BaseException:
    """The exception of the first rank that failed (DCP keeps each with its traceback's frames)."""
    failures = [e.failures[rank] for rank in sorted(e.failures)]
    cause = failures[0] if failures else e
    return cause[0] if isinstance(cause, tuple) else cause


# `metadata` below, as in load_into: `folder`'s `.metadata` if read already (a Shards' own).
def load_whole(folder: Path, keys: tuple[str, ...] = SHARDED_KEYS, metadata: Metadata | None = None) -> dict:
    """The entries `keys` of `folder` as plain, whole tensors and values, in this process alone."""
    reader = SafeReader(folder, metadata)
    present = {fqn.split(".", 1)[0] for fqn in reader.metadata.state_dict_metadata}
    return built_whole(reader, set(keys) & present, folder)


def read_values(folder: Path, metadata: Metadata | None = None) -> dict:
    """Every non-tensor value in `folder`'s shards (the optimizer's hyperparameters), read as a
    resume reads them (weights_only), without the tensors: one that is refused is refused here,
    in one line, before any model is built (the verify tool)."""
    reader = SafeReader(folder, metadata)
    entries = reader.metadata.state_dict_metadata
    # Whole names of values, which the planner takes as they are.
    return built_whole(reader, {fqn for fqn, meta in entries.items() if isinstance(meta, BytesStorageMetadata)}, folder)


def built_whole(reader: SafeReader, keys: set[str], folder: Path) -> dict:
    """The entries `keys` (top-level names, or whole names) built from the metadata and loaded."""
    state: dict = {}
    try:
        # DCP's private loader, as its own _load_state_dict_from_keys: dcp.load copies back only
        # the keys the given dict already has, which leaves an empty one empty.
        _load_state_dict(state, storage_reader=reader, planner=SafeFullPlanner(keys=keys), no_dist=True)
    except CheckpointException as e:
        raise refusal(e, folder) from e
    return state
