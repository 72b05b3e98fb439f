"""framework/checkpoint/sharded.py's reading of DCP's `.metadata`: everything DCP writes loads;
every way a pickle reaches past the allow-list is refused, named, and nothing of it is run."""

from __future__ import annotations

import copyreg
import io
import os
import pathlib
import pickle
import struct

import pytest
import torch

from framework.checkpoint import sharded
from framework.checkpoint.errors import DamagedCheckpoint, UnsafeCheckpoint


def unpickle(data: bytes):
    return sharded.MetadataUnpickler(io.BytesIO(data), pathlib.Path("dir/.metadata")).load()


def text(s: str) -> bytes:
    encoded = s.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded  # SHORT_BINUNICODE


def stack_global(module: str, name: str) -> bytes:
    return text(module) + text(name) + b"\x93"


@pytest.fixture
def saved(tmp_path):
    """A directory DCP wrote in this process: every dtype, an empty, a scalar and a channels_last
    tensor, a nested optimizer-like state with plain values."""
    import torch.distributed.checkpoint as dcp

    tensors = {str(dtype): torch.ones(2, dtype=dtype) for dtype in (torch.bfloat16, torch.float16, torch.int8,
               torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float64)}  # fmt: skip
    tensors.update(empty=torch.empty(0, 5), scalar=torch.tensor(3.0), step=torch.tensor(7),
                   channels_last=torch.zeros(1, 3, 2, 2).to(memory_format=torch.channels_last))  # fmt: skip
    optimizer = {
        "state": {"w": {"step": torch.tensor(1.0), "exp_avg": torch.ones(3), "nested": {"x": [torch.ones(2), 3]}}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["w"], "foreach": None, "name": "g"}],
    }
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model_state_dict": tensors, "optimizer_state_dict": optimizer}, checkpoint_id=tmp_path, no_dist=True)
    return tmp_path


def test_everything_dcp_writes_is_read(saved):
    metadata = sharded.read_metadata(saved)
    shapes = sharded.Shards(saved, "model_state_dict", metadata).shapes()
    assert shapes["empty"] == (0, 5) and shapes["scalar"] == () and shapes["channels_last"] == (1, 3, 2, 2)
    dtypes = {
        name: meta.properties.dtype
        for name, meta in sharded.Shards(saved, "model_state_dict", metadata).tensors().items()
    }
    assert dtypes["torch.float8_e4m3fn"] == torch.float8_e4m3fn and dtypes["torch.bfloat16"] == torch.bfloat16
    assert "optimizer_state_dict.param_groups.0.lr" in metadata.state_dict_metadata


@pytest.mark.parametrize(
    "pickled",
    [
        b"\x80\x04" + stack_global("posix", "system") + text("touch MARKER") + b"\x85R.",  # STACK_GLOBAL
        b"cposix\nsystem\n(S'touch MARKER'\ntR.",  # GLOBAL, protocol 0
        b"(S'touch MARKER'\niposix\nsystem\n.",  # INST
    ],
    ids=["STACK_GLOBAL", "GLOBAL", "INST"],
)
def test_a_global_outside_the_list_is_refused_by_name(pickled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeCheckpoint, match=r"^dir/\.metadata pickles posix\.system, which is not part of") as e:
        unpickle(pickled)
    assert e.value.needs == ["posix.system"] and not (tmp_path / "MARKER").exists()


def test_attributes_of_a_class_are_never_set():
    # PosixPath.__truediv__ = torch.Size, for the whole process, with BUILD's slot state
    poison = b"\x80\x04" + stack_global("pathlib", "PosixPath") + b"N}" + text("__truediv__")
    poison += stack_global("torch", "Size") + b"s\x86b."
    with pytest.raises(UnsafeCheckpoint, match=r"sets attributes of pathlib\.PosixPath"):
        unpickle(poison)
    assert "__truediv__" not in vars(pathlib.PosixPath) and str(pathlib.Path("a") / "b") == "a/b"


def test_attributes_of_a_shared_value_are_never_set():
    layout = stack_global("torch.serialization", "_get_layout") + text("torch.strided") + b"\x85R"
    with pytest.raises(UnsafeCheckpoint, match=r"sets attributes of torch\.layout"):
        unpickle(b"\x80\x04" + layout + b"}" + text("x") + b"K\x01sb.")
    function = stack_global("torch.serialization", "_get_layout")
    with pytest.raises(UnsafeCheckpoint, match=r"sets attributes of builtins\.function"):
        unpickle(b"\x80\x04" + function + b"}" + text("cache") + b"}sb.")
    assert not hasattr(torch.strided, "x") and isinstance(torch.serialization._get_layout.cache, dict)


def test_an_extension_code_is_refused_even_when_registered_and_cached(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = 0x7A31
    copyreg.add_extension("posix", "system", code)
    copyreg._extension_cache[code] = os.system  # as an earlier unpickling leaves it: find_class never asked
    try:
        with pytest.raises(UnsafeCheckpoint, match=r"uses a copyreg extension code"):
            unpickle(b"\x80\x02\x83" + struct.pack("<H", code) + text("touch MARKER") + b"\x85R.")
    finally:
        copyreg.remove_extension("posix", "system", code)
    assert not (tmp_path / "MARKER").exists()


def test_a_persistent_id_is_refused():
    with pytest.raises(UnsafeCheckpoint, match=r"refers to an object outside it \(a persistent id\)"):
        unpickle(b"\x80\x02" + text("anything") + b"Q.")


def rewrite(folder, change, table: str = "storage_data") -> None:
    """`.metadata` with `change` made to every value of one of its tables."""
    metadata = sharded.read_metadata(folder)
    for value in getattr(metadata, table).values():
        change(value)
    (folder / sharded.METADATA).write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize(
    "change",
    [lambda meta: setattr(meta, "size", [2]), lambda meta: setattr(meta.properties, "dtype", "torch.float32")],
    ids=["size", "dtype"],
)
def test_an_entry_of_another_shape_is_refused(saved, change):
    rewrite(saved, lambda meta: hasattr(meta, "size") and change(meta), table="state_dict_metadata")
    with pytest.raises(DamagedCheckpoint, match=r"does not describe its entry 'model_state_dict\.\S+' as DCP does"):
        sharded.read_metadata(saved)


@pytest.mark.parametrize("name", ["../elsewhere.distcp", "/etc/passwd", "..", ""])
def test_a_shard_outside_the_directory_is_refused(saved, name):
    rewrite(saved, lambda info: setattr(info, "relative_path", name))
    with pytest.raises(DamagedCheckpoint, match=f"names {name!r} as a shard: not a file of its own directory"):
        sharded.read_metadata(saved)


def test_a_transform_is_refused(saved):
    rewrite(saved, lambda info: setattr(info, "transform_descriptors", ["zstd"]))
    with pytest.raises(DamagedCheckpoint, match=r"lists transforms of its shards \(\['zstd'\]\): none are written"):
        sharded.read_metadata(saved)


def test_a_refusal_survives_pickling():
    """DCP gathers every rank's failure by pickling it."""
    refused = pickle.loads(pickle.dumps(UnsafeCheckpoint("dir/.metadata pickles posix.system", ["posix.system"])))
    assert str(refused) == "dir/.metadata pickles posix.system" and refused.needs == ["posix.system"]
