"""A sharded checkpoint directory made by an attacker (its checksums made to match) or damaged:
refused in one line, with nothing of it run; its checksums checked before anything in it is read.

Each directory is a copy of a one-process `fsdp` run's `last/`, changed, read by the store, by a
resume and by `python -m framework.ckpt verify` (its `main`, in this process). Stock DCP, given
the same directories, runs their payloads: the tests' payloads can fire."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch
import xxhash
from helpers import flip_middle_byte, train_in_process

from framework.atomic import json_text
from framework.checkpoint import CheckpointError, dcp_io, io, sharded
from framework.checkpoint.errors import DamagedCheckpoint, UnsafeCheckpoint
from framework.checkpoint.storage import LocalFiles
from framework.cli import ckpt
from framework.config.errors import ConfigError

# One process, stopped at step 10 of an epoch of digits' 20: last/ and best/ (a resume goes on).
# The run tests/integration/test_sharded_tools.py trains as `stopped`: one training for both.
FSDP = ("model=mlp", "trainer.max_epochs=1", "logger=none", "trainer.strategy=fsdp", "determinism.num_threads=1",
        "trainer.max_steps=10")  # fmt: skip
GO_ON = "trainer.max_steps=null"


class Hostile:
    """Pickled as a call of os.system: unpickling it creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def run(trained_run, tmp_path):
    """A copy of a one-process fsdp run (its directories' files no longer hard links)."""
    return shutil.copytree(trained_run(*FSDP), tmp_path / "run")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


def sign(directory, index: bool = True) -> None:
    """What an attacker can do: the directory's manifest made to match its files, and (with
    `index`) its entry in index.json too, as the store writes them."""
    files = {name: io.file_digests(directory / name) for name in os.listdir(directory) if name != sharded.MANIFEST}
    manifest = json_text({"files": files}, indent=2, sort_keys=True)
    (directory / sharded.MANIFEST).write_text(manifest)
    if index:
        index_file = directory.parent / "index.json"
        listed = json.loads(index_file.read_text())
        for entry in listed["files"]:
            if entry["file"] == directory.name:
                entry.update(
                    files=files,
                    size=sum(f["size"] for f in files.values()),
                    sha256=hashlib.sha256(manifest.encode()).hexdigest(),
                    xxh3_128=xxhash.xxh3_128_hexdigest(manifest.encode()),
                )
        index_file.write_text(json.dumps(listed))


def plant_in_metadata(directory, marker) -> None:
    """`.metadata` as DCP wrote it, with a Hostile among the modules it records."""
    metadata = sharded.read_metadata(directory)
    metadata.storage_meta.modules = [Hostile(marker)]
    (directory / sharded.METADATA).write_bytes(pickle.dumps(metadata))


def plant_in_shards(directory, marker) -> None:
    """The directory's tensors and values saved again by DCP, the optimizer's learning rate a
    Hostile (a value DCP pickles into the shard file)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(directory, directory.parent / "whole.pt")  # the run's own directory, not yet changed
    state = torch.load(directory.parent / "whole.pt", weights_only=True)
    state["optimizer_state_dict"]["param_groups"][0]["lr"] = Hostile(marker)
    resaved = directory.parent / "resaved"
    dcp_io.save(state, resaved, no_dist=True)
    for name in os.listdir(resaved):
        os.replace(resaved / name, directory / name)
    resaved.rmdir()


def read(directory):
    return LocalFiles(directory.parent).read(directory.name)


def stock_dcp_loads(directory, tmp_path) -> None:
    """What DCP's own tools do with a directory (plain pickle, weights_only=False)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    try:
        dcp_to_torch_save(directory, tmp_path / "converted.pt")
    except BaseException:  # the payload ran already; what it returns makes no valid state
        pass


@pytest.mark.parametrize("index", [True, False], ids=["index-signed", "manifest-only"])
def test_a_hostile_metadata_is_refused_by_name_and_never_run(run, marker, tmp_path, index, caplog):
    last = run / "checkpoints" / "last"
    plant_in_metadata(last, marker)
    sign(last, index=index)
    refused = r"\.metadata pickles posix\.system, which is not part of"
    with pytest.raises(UnsafeCheckpoint, match=refused) as e:
        read(last)
    assert "\n" not in str(e.value) and e.value.needs == ["posix.system"]
    assert ckpt.main(["verify", str(last)]) != 0
    with pytest.raises(UnsafeCheckpoint, match=refused):
        dcp_io.load_into({}, last)  # without the store before it: DCP never logs the refusal with a traceback
    assert "Traceback" not in caplog.text
    assert not marker.exists()
    stock_dcp_loads(last, tmp_path)
    assert marker.exists()  # the payload is live: DCP's own loader runs it


def test_a_hostile_metadata_stops_a_resume_in_one_line(run, marker):
    last = run / "checkpoints" / "last"
    plant_in_metadata(last, marker)
    sign(last)
    with pytest.raises(ConfigError, match=r"^resume=\S+/last: \S+/last/\.metadata pickles posix\.system") as refused:
        train_in_process(run, *FSDP, f"resume={last}", GO_ON)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_hostile_value_in_a_shard_is_refused_by_name_and_never_run(run, marker, tmp_path):
    last = run / "checkpoints" / "last"
    plant_in_shards(last, marker)
    sign(last)
    read(last)  # `.metadata` is DCP's own: the value is met when the shards are loaded
    refused = r"/last needs more than torch\.load\(weights_only=True\): a value in its shards pickles posix\.system"
    with pytest.raises(UnsafeCheckpoint, match=refused):
        train_in_process(run, *FSDP, f"resume={last}", GO_ON)
    with pytest.raises(UnsafeCheckpoint, match=refused):
        dcp_io.read_values(last)  # without the tensors, what a verify can read
    assert ckpt.main(["verify", str(last)]) != 0
    assert not marker.exists()
    stock_dcp_loads(last, tmp_path)
    assert marker.exists()


# Each way a directory's files can differ from its checksums -> what the refusal says.
def flipped_metadata(directory, marker):
    flip_middle_byte(directory / sharded.METADATA)
    return r"\.metadata does not match its xxh3 checksum"


def hostile_metadata_unsigned(directory, marker):
    plant_in_metadata(directory, marker)
    return r"\.metadata has \d+ bytes, its checksums list \d+"


def an_unlisted_file(directory, marker):
    (directory / "__1_0.distcp").write_bytes(b"")
    return r"does not hold the files its checksums list: unlisted __1_0\.distcp$"


def a_missing_shard(directory, marker):
    (directory / "__0_0.distcp").unlink()
    return r"does not hold the files its checksums list: missing __0_0\.distcp$"


def a_symlink(directory, marker):
    shard = directory / "__0_0.distcp"
    os.replace(shard, directory.parent / "elsewhere.distcp")
    shard.symlink_to(directory.parent / "elsewhere.distcp")
    return r"__0_0\.distcp is not a regular file$"


@pytest.mark.parametrize("damage", [flipped_metadata, hostile_metadata_unsigned, an_unlisted_file, a_missing_shard,
                                    a_symlink])  # fmt: skip
def test_files_that_differ_from_their_checksums_are_refused_before_anything_is_unpickled(run, marker, damage):
    last = run / "checkpoints" / "last"
    says = damage(last, marker)
    with pytest.raises(DamagedCheckpoint, match=says) as refused:
        read(last)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_stale_index_entry_falls_back_to_the_manifest(run):
    """A save cut short after the rename: the directory is new, index.json still describes the
    one it replaced. Read against the directory's own manifest, and said so."""
    index_file = run / "checkpoints" / "index.json"
    listed = json.loads(index_file.read_text())
    entry = next(e for e in listed["files"] if e["file"] == "last")
    entry["files"][sharded.METADATA]["xxh3_128"] = "0" * 32
    index_file.write_text(json.dumps(listed))
    loaded, passed = read(run / "checkpoints" / "last")
    assert loaded["global_step"] == 10
    assert passed.endswith("of its 3 files in its checksums.json (index.json's entry for it is out of date: "
                           "a save was cut short after the rename)")  # fmt: skip
    flip_middle_byte(run / "checkpoints" / "last" / sharded.METADATA)  # the manifest is checked as the entry would be
    with pytest.raises(CheckpointError, match="does not match its xxh3 checksum"):
        read(run / "checkpoints" / "last")
