"""The tensors of a sharded checkpoint: written by every rank with torch.distributed.checkpoint
(DCP), read back without running anything a checkpoint directory could carry.

Stock DCP reads `.metadata` with plain pickle and every non-tensor value with
torch.load(weights_only=False): a crafted directory runs code on load. Here `.metadata` goes
through an unpickler that builds only DCP's own metadata classes, torch's sizes, dtypes and
layouts (and the path DCP records), and every non-tensor value through
torch.load(weights_only=True). Anything else is refused (UnsafeCheckpoint), named, unrun.

This module reads a checkpoint directory (its files, their checksums, `.metadata`, the rest of
the checkpoint) and imports no part of torch.distributed.checkpoint, which takes a second to
import: a run that never meets a directory never pays it. Loading and saving the tensors is
framework/checkpoint/dcp_io.py's; writing and committing a directory is the store's
(framework/checkpoint/directories.py).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from framework.checkpoint import io as checkpoint_io
from framework.checkpoint.errors import DamagedCheckpoint, ForeignCheckpoint, UnsafeCheckpoint

# The checkpoint's entries that DCP writes, each rank its shard; everything else is one file.
SHARDED_KEYS = ("model_state_dict", "optimizer_state_dict")
# A checkpoint directory's files besides DCP's (framework/checkpoint/directories.py writes them).
METADATA = ".metadata"
REST = "train_state.pt"  # every other entry of the checkpoint, one torch.save file
MANIFEST = "checksums.json"  # size, xxh3 and sha256 of every other file

# What `.metadata` may build: DCP's metadata classes and the few torch and pathlib values they hold
# (torch dtypes too, by name: see MetadataUnpickler.find_class). Checked against what DCP writes in
# torch 2.13 for every dtype, empty and scalar tensors, nested optimizer states, one rank or several.
METADATA_CLASSES = {
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "TensorStorageMetadata",
            "TensorProperties",
            "ChunkStorageMetadata",
            "BytesStorageMetadata",
            "MetadataIndex",
            "StorageMeta",
        )
    ),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
}
ALLOWED_GLOBALS = {
    *METADATA_CLASSES,
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),  # a tensor's memory format
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # looks a layout up by its name
    ("pathlib", "PosixPath"),  # the directory DCP wrote to (StorageMeta.checkpoint_id)
}


class MetadataUnpickler(pickle._Unpickler):
    """Builds DCP's metadata and nothing else. Python's own unpickler rather than the C one
    (slower: about a second per MB of metadata, 3 to 10 times the C one; a model of ~1000
    tensors under Adam on 8 ranks writes 1.5 MB): its opcodes can be overridden, and three of
    them reach past find_class: BUILD sets attributes on whatever it is given (a class too:
    `pathlib.PosixPath.__truediv__` replaced for the whole process), EXT1-4 take objects from
    copyreg's extension cache, and persistent ids go to persistent_load."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path):
        super().__init__(file, fix_imports=False)
        self.path = path

    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in ALLOWED_GLOBALS or dtype:
            return super().find_class(module, name)
        raise self.refused(f"pickles {module}.{name}", f"{module}.{name}")

    def load_build(self):
        # Only the objects this pickle made itself, of DCP's classes; never a class, a function
        # or a shared value (an enum member, a dtype, a layout).
        target = type(self.stack[-2])
        if (target.__module__, target.__qualname__) not in METADATA_CLASSES:
            named = self.stack[-2] if isinstance(self.stack[-2], type) else target
            raise self.refused(f"sets attributes of {named.__module__}.{named.__qualname__}", "BUILD")
        super().load_build()

    def load_extension(self):
        raise self.refused("uses a copyreg extension code", "EXT")

    def persistent_load(self, pid):
        raise self.refused("refers to an object outside it (a persistent id)", "PERSID")

    dispatch[pickle.BUILD[0]] = load_build
    dispatch.update(dict.fromkeys((pickle.EXT1[0], pickle.EXT2[0], pickle.EXT4[0]), load_extension))

    def refused(self, what: str, needs: str) -> UnsafeCheckpoint:
        return UnsafeCheckpoint(
            f"{self.path} {what}, which is not part of torch.distributed.checkpoint's metadata: "
            "refused, and nothing of it was run",
            [needs],
        )


def read_metadata(folder: Path):
    """The `.metadata` of a DCP directory (a torch.distributed.checkpoint.metadata.Metadata), built
    by MetadataUnpickler only, naming only files of its own directory."""
    from torch.distributed.checkpoint.metadata import Metadata  # see the module's docstring

    path = Path(folder) / METADATA
    try:
        with open(path, "rb") as f:
            metadata = MetadataUnpickler(f, path).load()
    except UnsafeCheckpoint:
        raise
    except FileNotFoundError as e:
        raise DamagedCheckpoint(f"{path} is missing: the directory is not a complete sharded checkpoint") from e
    except Exception as e:  # a truncated or garbled pickle
        raise DamagedCheckpoint(f"{path} does not read as DCP metadata: {type(e).__name__}: {e}") from e
    if not isinstance(metadata, Metadata):
        raise DamagedCheckpoint(f"{path} holds a {type(metadata).__name__}, not DCP metadata")
    check_tables(metadata, path)
    return metadata


def check_tables(metadata, path: Path) -> None:
    """Each entry of `.metadata` as DCP writes it (a tensor's size a torch.Size, its dtype a
    dtype: what Shards reads outside DCP), and each shard it points to a file of its own
    directory, read as written (DCP would read any path it names, `../../x` or `/x`, and undo
    any transform it lists)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    entries, storage = metadata.state_dict_metadata, metadata.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise DamagedCheckpoint(f"{path} does not read as DCP metadata: its tables are not dicts")
    for fqn, meta in entries.items():
        described = isinstance(meta, BytesStorageMetadata) or (
            isinstance(meta, TensorStorageMetadata)
            and isinstance(meta.size, torch.Size)
            and isinstance(getattr(meta.properties, "dtype", None), torch.dtype)
        )
        if not isinstance(fqn, str) or not described:
            raise DamagedCheckpoint(f"{path} does not describe its entry {fqn!r} as DCP does")
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name:
            raise DamagedCheckpoint(f"{path} names {name!r} as a shard: not a file of its own directory")
        if getattr(info, "transform_descriptors", None):
            said = f"transforms of its shards ({info.transform_descriptors!r})"
            raise DamagedCheckpoint(f"{path} lists {said}: none are written here")


@dataclass
class Shards:
    """In a checkpoint read from a directory, the value of each SHARDED_KEYS entry: where its
    tensors are. Loaded into a live model and optimizer (framework/engine/state.py), or whole
    (`load_whole`, for the tools)."""

    folder: Path
    key: str
    metadata: object  # torch.distributed.checkpoint.metadata.Metadata

    def tensors(self) -> dict:
        """Each tensor's metadata under this entry (its whole size, its dtype), by its name inside it."""
        prefix = self.key + "."
        return {
            fqn[len(prefix) :]: meta
            for fqn, meta in self.metadata.state_dict_metadata.items()
            if fqn.startswith(prefix) and hasattr(meta, "chunks")  # TensorStorageMetadata; bytes have none
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's whole shape under this entry, by its name inside it."""
        return {name: tuple(meta.size) for name, meta in self.tensors().items()}

    def tensor_bytes(self) -> int:
        return sum(
            meta.size.numel() * torch.empty((), dtype=meta.properties.dtype).element_size()
            for meta in self.tensors().values()
        )


# ---- a checkpoint directory, read ----------------------------------------------------------------------------------
def is_checkpoint_directory(path: Path) -> bool:
    """Whether a directory is one sharded checkpoint (not a folder of them, nor a run directory)."""
    return (Path(path) / MANIFEST).is_file() or (Path(path) / METADATA).is_file()


def listed_files(path: Path, entry: dict | None) -> tuple[dict, str]:
    """The files the directory must hold, with their digests: from its index entry when that
    describes this directory (its manifest matches), else from its own manifest. Returns them
    and where they came from, in words."""
    manifest = path / MANIFEST
    try:
        text = manifest.read_text()
        own = json.loads(text)["files"]
        if not isinstance(own, dict):
            raise TypeError
    except FileNotFoundError as e:
        raise DamagedCheckpoint(f"{path} has no {MANIFEST}: not a complete sharded checkpoint") from e
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(f"{path}/{MANIFEST} is not a valid manifest") from e
    if entry is not None and isinstance(entry.get("files"), dict):
        if entry["files"] == own and entry.get("xxh3_128") == xxhash.xxh3_128_hexdigest(text.encode()):
            return entry["files"], "index.json"
        return own, f"its {MANIFEST} (index.json's entry for it is out of date: a save was cut short after the rename)"
    return own, f"its {MANIFEST} (index.json does not list it: a save cut short after the rename, or a lost index)"


def check_files(path: Path, files: dict, sha256: bool) -> None:
    """Every listed file present with its size and xxh3 (and sha256), nothing unlisted beside them."""
    present = set(os.listdir(path)) - {MANIFEST}
    if present != set(files):
        extra, missing = sorted(present - set(files)), sorted(set(files) - present)
        said = [f"unlisted {', '.join(extra)}"] if extra else []
        said += [f"missing {', '.join(missing)}"] if missing else []
        raise DamagedCheckpoint(f"{path} does not hold the files its checksums list: {'; '.join(said)}")
    for name, listed in sorted(files.items()):
        file = path / name
        if not file.is_file() or file.is_symlink():
            raise DamagedCheckpoint(f"{file} is not a regular file")
        if not isinstance(listed, dict) or file.stat().st_size != listed.get("size"):
            raise DamagedCheckpoint(f"{file} has {file.stat().st_size} bytes, its checksums list {listed.get('size')}")
        if checkpoint_io.xxh3_of(file) != listed.get("xxh3_128"):
            raise DamagedCheckpoint(f"{file} does not match its xxh3 checksum: the file is damaged")
        if sha256 and checkpoint_io.sha256_of(file) != listed.get("sha256"):
            raise DamagedCheckpoint(f"{file} does not match its sha256 checksum: the file is damaged")


def read_directory(path: Path, entry: dict | None, sha256: bool = False) -> tuple[dict, str]:
    """A sharded checkpoint, checked: every file against its checksums before anything is read,
    then `.metadata` (DCP's classes only) and train_state.pt (weights_only). The tensors stay on
    disk: each sharded entry is a `sharded.Shards`, loaded into a model later."""
    files, source = listed_files(path, entry)
    check_files(path, files, sha256)
    metadata = read_metadata(path)
    rest = path / REST
    ckpt = checkpoint_io.safe_load(rest, mmap=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict):
        raise ForeignCheckpoint(f"{rest} is not a checkpoint of this framework (no 'meta')")
    what = "size, xxh3 and sha256" if sha256 else "size and xxh3"
    ckpt, passed = checkpoint_io.checked_contents(ckpt, rest, f"the {what} of its {len(files)} files in {source}")
    for key in ckpt.get("sharded_keys", []):
        ckpt[key] = Shards(path, key, metadata)
    return ckpt, passed
