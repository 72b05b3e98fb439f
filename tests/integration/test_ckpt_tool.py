"""python -m framework.ckpt: inspect, verify, diff and export, and their exit codes.

The matrix runs in this process through the module's real `__main__` path (runpy); the real
command line is tests/cli/test_ckpt_tool.py."""

from __future__ import annotations

import os
import runpy
import shutil
import sys

import pytest
import torch
import yaml
from helpers import flip_middle_byte

from framework.checkpoint import io

# Two epochs of the small MLP, a numbered file each epoch: best.pt, epoch_0001.pt,
# epoch_0002.pt, last.pt and index.json.
QUICK = ("model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_epochs=1")


@pytest.fixture
def runs(trained_run, tmp_path_factory):
    """Two runs that differ only by seed (shared by the whole test session), as runs/seed0 and
    runs/seed1; never changed by a test (last.pt, best.pt and epoch_0002.pt are hard links of one
    file): a test that damages a file copies it first."""
    root = tmp_path_factory.mktemp("ckpt_tool")
    for seed in (0, 1):
        (root / f"seed{seed}").symlink_to(trained_run(*QUICK, f"seed={seed}"))
    return root


@pytest.fixture
def ckpt(monkeypatch, capsys):
    """ckpt(*args) -> (exit code, stdout, stderr) of `python -m framework.ckpt ARGS`, in process."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["python -m framework.ckpt", *map(str, args)])
        try:
            runpy.run_module("framework.ckpt", run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def copy_run(runs, tmp_path, seed=0):
    """A run directory of the test's own, with separate files (no hard links between them)."""
    return shutil.copytree(runs / f"seed{seed}", tmp_path / f"seed{seed}")


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_inspect_shows_counters_versions_sizes_and_config(runs, ckpt):
    last = runs / "seed0" / "checkpoints" / "last.pt"
    code, out, err = ckpt("inspect", last)
    assert code == 0 and err == ""
    assert "(checked: its size and xxh3 in index.json" in out
    for expected in (
        "kind            full",
        "epoch           2",
        "global step     40",
        "data position   epoch 2, batch 0",
        "monitored       val/loss (min), best ",
        "world size      1",
        "determinism     seeded",
        f"torch {torch.__version__}",
        "model      framework.models.MLP",
        "optimizer  torch.optim.SGD",
        "data       framework.data.load_digits",
        "seed       0",
    ):
        assert expected in out, expected
    # The MLP (64 -> 256 -> 256 -> 10): 6 tensors, 85,002 float32 values.
    assert "model_state_dict         6 tensors         85,002 values   332.0 KiB" in out
    assert "optimizer_state_dict     6 tensors" in out

    code, out, _ = ckpt("inspect", last, "--config")
    embedded = torch.load(last, weights_only=True)["config"]
    assert code == 0 and out == embedded
    assert yaml.safe_load(out) == yaml.safe_load(embedded) and yaml.safe_load(out)["seed"] == 0


def test_a_torn_or_altered_file_is_damaged(runs, tmp_path, ckpt):
    torn, altered = tmp_path / "torn.pt", tmp_path / "altered.pt"
    for path in (torn, altered):
        shutil.copyfile(runs / "seed0" / "checkpoints" / "last.pt", path)
    truncate(torn)
    flip_middle_byte(altered)
    code, out, err = ckpt("inspect", torn)
    assert code == 4 and out == ""
    assert err.startswith(f"Error: {torn} does not load with torch.load(weights_only=True)") and err.count("\n") == 1
    code, out, err = ckpt("inspect", altered)
    assert (code, out) == (4, "")
    assert err.startswith(f"Error: {altered} is corrupt: 1 record(s) of its archive fail their CRC32 (")
    assert err.count("\n") == 1


def test_a_hostile_file_is_refused_and_nothing_in_it_runs(tmp_path, ckpt):
    marker = tmp_path / "MARKER"

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    hostile = folder / "last.pt"
    torch.save({"model_state_dict": Hostile(), "meta": {}}, hostile)
    for args in (("inspect", hostile), ("export", hostile, tmp_path / "out.pt"), ("diff", hostile, hostile)):
        code, out, err = ckpt(*args)
        assert (code, out) == (5, "")
        assert "it pickles posix.system" in err and "Nothing of it was unpickled" in err
    code, out, _ = ckpt("verify", folder)
    assert code == 5 and "BAD   last.pt" in out and "posix.system" in out and out.endswith("1 file: 1 bad\n")
    legacy = tmp_path / "legacy.pt"  # torch's format before 1.6: refused as unsafe all the same
    torch.save({"model_state_dict": Hostile()}, legacy, _use_new_zipfile_serialization=False)
    code, out, err = ckpt("inspect", legacy)
    assert (code, out) == (5, "") and "it pickles posix.system" in err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_another_programs_checkpoint_is_foreign_with_the_way_to_import_it(tmp_path, ckpt):
    tutorial = tmp_path / "tutorial.pt"
    torch.save({"model_state_dict": torch.nn.Linear(2, 1).state_dict(), "epoch": 3}, tutorial)
    code, out, err = ckpt("inspect", tutorial)
    assert (code, out) == (6, "")
    assert f"{tutorial} is not a checkpoint of this framework" in err
    assert "looks like another program's training checkpoint" in err
    assert "python -m framework.ckpt migrate SRC DST model=... optimizer=..." in err
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    code, _, err = ckpt("inspect", tensor)
    assert code == 6 and "it holds a Tensor" in err and "migrate" not in err
    # torch's format before 1.6 (not a zip): it cannot be memory-mapped, but it is no less foreign
    legacy = tmp_path / "legacy.pt"
    torch.save({"model_state_dict": torch.nn.Linear(2, 1).state_dict()}, legacy, _use_new_zipfile_serialization=False)
    code, _, err = ckpt("inspect", legacy)
    assert code == 6 and "looks like another program's training checkpoint" in err


def test_a_file_that_is_no_torch_file_at_all_says_so(tmp_path, ckpt):
    junk = tmp_path / "notes.pt"
    junk.write_text("my notes, saved under the wrong name\n" * 20)
    code, out, err = ckpt("inspect", junk)
    assert (code, out) == (4, "")
    assert err == f"Error: {junk} is not a torch checkpoint: neither a zip archive (torch.save's format) nor " + (
        "torch's older format\n"
    )


def test_a_newer_format_is_refused_not_guessed_at(tmp_path, ckpt):
    newer = tmp_path / "newer.pt"
    torch.save({"meta": {"format_version": 99, "framework_version": "9.0.0"}}, newer)
    code, out, err = ckpt("inspect", newer)
    assert (code, out) == (7, "")
    assert f"{newer} has checkpoint format 99, written by framework 9.0.0" in err


def test_a_missing_file_or_folder(runs, tmp_path, ckpt):
    nowhere = tmp_path / "nowhere.pt"
    last = runs / "seed0" / "checkpoints" / "last.pt"
    for args in (("inspect", nowhere), ("diff", last, nowhere), ("export", nowhere, tmp_path / "x.pt")):
        assert ckpt(*args) == (3, "", f"Error: no such file: {nowhere}\n")
    assert ckpt("verify", tmp_path / "nowhere") == (
        3,
        "",
        f"Error: no such file or directory: {tmp_path / 'nowhere'}\n",
    )
    code, _, err = ckpt("verify", tmp_path)
    assert code == 3 and "no checkpoint files" in err


def test_verify_a_run_directory(runs, ckpt):
    code, out, err = ckpt("verify", runs / "seed0")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["ok", "best.pt"],
        ["ok", "epoch_0001.pt"],
        ["ok", "epoch_0002.pt"],
        ["ok", "last.pt"],
    ]
    checked = "(checked: its size, xxh3 and sha256 in index.json)"
    assert lines[1] == f"ok    epoch_0001.pt  epoch 1 step 20  {checked}"
    assert lines[-1] == "4 files: 4 ok"
    # The checkpoints folder itself, and one file alone, are checked the same way.
    assert ckpt("verify", runs / "seed0" / "checkpoints")[1] == out
    code, out, _ = ckpt("verify", runs / "seed0" / "checkpoints" / "last.pt")
    assert code == 0 and out.endswith("1 file: 1 ok\n")


def test_verify_names_the_damaged_file_and_a_listed_file_that_is_missing(runs, tmp_path, ckpt):
    folder = copy_run(runs, tmp_path) / "checkpoints"
    flip_middle_byte(folder / "epoch_0001.pt")
    code, out, _ = ckpt("verify", folder.parent)
    lines = out.splitlines()
    assert code == 4
    assert lines[1].startswith(f"BAD   epoch_0001.pt  {folder / 'epoch_0001.pt'} is corrupt: 1 record(s) of its")
    assert [line.split()[0] for line in lines[:-1]] == ["ok", "BAD", "ok", "ok"]
    assert lines[-1] == "4 files: 1 bad"

    (folder / "best.pt").unlink()  # still listed in index.json; the first bad file by name now
    code, out, _ = ckpt("verify", folder.parent)
    assert code == 3
    assert out.splitlines()[0] == "BAD   best.pt  listed in index.json, but the file is missing"
    assert out.splitlines()[-1] == "4 files: 2 bad"


def test_diff_a_file_with_itself_and_with_another_run(runs, ckpt):
    a = runs / "seed0" / "checkpoints" / "last.pt"
    b = runs / "seed1" / "checkpoints" / "last.pt"
    assert ckpt("diff", a, a) == (0, "identical\n", "")
    assert ckpt("diff", a, runs / "seed0" / "checkpoints" / "best.pt") == (0, "identical\n", "")

    code, out, err = ckpt("diff", a, b)
    assert (code, err) == (1, "")
    assert "config: 2 keys differ\n" in out and "  seed: 0 -> 1\n" in out
    assert "  model_state_dict.net.1.weight: max abs difference " in out
    assert "(float32[256, 64])" in out
    assert "  rng_state: " in out and " of 5,056 values differ (uint8[5056])" in out
    assert "epoch:" not in out  # the same counters

    code, out, _ = ckpt("diff", a, runs / "seed0" / "checkpoints" / "epoch_0001.pt")
    assert code == 1 and out.startswith("config: identical\n")
    assert "  epoch: 2 -> 1\n  global_step: 40 -> 20\n  loader_state.epoch: 2 -> 1\n" in out


def test_export_to_pt_is_a_model_only_checkpoint(runs, tmp_path, ckpt):
    source = runs / "seed0" / "checkpoints" / "last.pt"
    out_path = tmp_path / "model.pt"
    code, out, err = ckpt("export", source, out_path)
    assert (code, err) == (0, "")
    assert out.startswith(f"wrote {out_path}: model-only, 6 tensors, 85,002 values, ")
    exported = torch.load(out_path, weights_only=True)
    original = torch.load(source, weights_only=True)
    assert set(exported) == set(io.MODEL_KEYS)
    assert exported["meta"]["kind"] == "model" and exported["config"] == original["config"]
    assert exported["model_state_dict"].keys() == original["model_state_dict"].keys()
    for name, tensor in original["model_state_dict"].items():
        assert torch.equal(exported["model_state_dict"][name], tensor)
    checked, passed = io.load_checked(out_path)
    assert checked["global_step"] == 40 and passed.startswith("its CRC32 records (index.json does not list it")


def test_export_to_safetensors_keeps_the_config_in_its_metadata(runs, tmp_path, ckpt):
    from safetensors import safe_open
    from safetensors.torch import load_file

    source = runs / "seed0" / "checkpoints" / "last.pt"
    out_path = tmp_path / "model.safetensors"
    code, out, _ = ckpt("export", source, out_path)
    assert code == 0 and out.startswith(f"wrote {out_path}: model-only, 6 tensors")
    original = torch.load(source, weights_only=True)
    tensors = load_file(out_path)
    assert tensors.keys() == original["model_state_dict"].keys()
    assert all(torch.equal(tensors[k], v) for k, v in original["model_state_dict"].items())
    with safe_open(out_path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["config"] == original["config"] and metadata["format"] == "framework-model"
    assert (metadata["epoch"], metadata["global_step"]) == ("2", "40")
    assert '"kind": "model"' in metadata["meta"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_export_refuses_to_overwrite_or_an_unknown_extension(runs, tmp_path, ckpt):
    source = runs / "seed0" / "checkpoints" / "last.pt"
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"mine")
    code, out, err = ckpt("export", source, taken)
    assert (code, out) == (2, "") and err == f"Error: {taken} exists; pass --force to replace it\n"
    assert taken.read_bytes() == b"mine"
    assert ckpt("export", source, taken, "--force")[0] == 0
    assert torch.load(taken, weights_only=True)["meta"]["kind"] == "model"

    code, _, err = ckpt("export", source, tmp_path / "model.bin")
    assert code == 2 and "'.bin'" in err and ".pt" in err and ".safetensors" in err
    assert not (tmp_path / "model.bin").exists()
