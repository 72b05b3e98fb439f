"""The tools on sharded checkpoint directories (trainer.strategy=fsdp), in process: `python -m
framework.ckpt` inspect, verify, diff, export and convert (both ways), and `python -m
framework.compare` of runs whose last checkpoint is a directory.

The runs train with fsdp in this one process (a one-rank group, made and destroyed by the run);
every tool reads a directory with no process group, as the command line does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import flip_middle_byte, train_in_process

from framework.checkpoint import convert, io, sharded, storage
from framework.cli import ckpt as tool
from framework.cli import compare

# The small MLP on digits, 20 steps an epoch in one process; best and last are directories. One
# thread: with two, the one-rank group's threads and torch's spin against each other on 2 CPUs.
FSDP = ("model=mlp", "trainer.max_epochs=1", "logger=none", "trainer.strategy=fsdp", "determinism.num_threads=1")
STOP = "trainer.max_steps=10"  # mid-epoch: epoch 0, batch 10 (test_sharded_safety.py shares this run)
GO_ON = "trainer.max_steps=null"


@pytest.fixture
def straight(trained_run) -> Path:
    """One epoch straight through (shared by the session: copy it to change it)."""
    return trained_run(*FSDP)


@pytest.fixture
def stopped(trained_run) -> Path:
    """The same run stopped mid-epoch, shared the same way."""
    return trained_run(*FSDP, STOP)


@pytest.fixture
def run_tool(capsys):
    """run_tool(module, *args) -> (exit code, stdout, stderr) of `python -m framework.ckpt ARGS`
    (module tool) or `python -m framework.compare ARGS` (module compare), through its main."""

    def run(module, *args):
        code = module.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "UserWarning" not in err, err
        return code, out, err

    return run


def last_of(run: Path) -> Path:
    return run / "checkpoints" / "last"


def test_inspect_verify_and_export_read_a_directory(straight, tmp_path, run_tool):
    code, out, _ = run_tool(tool, "inspect", last_of(straight))
    assert code == 0 and "a sharded directory: 1 shard file written by 1 rank" in out, out
    assert "global step     20" in out and "model_state_dict " in out and "optimizer_state_dict " in out, out
    code, out, _ = run_tool(tool, "verify", straight)
    assert code == 0 and out.endswith("2 checkpoints: 2 ok\n"), out  # best/ and last/
    assert "the size, xxh3 and sha256 of its 3 files in index.json" in out, out

    ckpt, _ = storage.for_folder(last_of(straight).parent).read("last")
    weights = convert.whole(ckpt)["model_state_dict"]
    for out_file in (tmp_path / "model.pt", tmp_path / "model.safetensors"):
        code, said, err = run_tool(tool, "export", last_of(straight), out_file)
        assert code == 0, err
        if out_file.suffix == ".pt":
            exported = torch.load(out_file, weights_only=True)["model_state_dict"]
        else:
            from safetensors.torch import load_file

            exported = load_file(out_file)
        assert exported.keys() == weights.keys()
        assert all(torch.equal(exported[k], weights[k]) for k in weights), out_file


def test_verify_names_the_damaged_file_of_a_directory(straight, tmp_path, run_tool):
    run = shutil.copytree(straight, tmp_path / "run")  # copies: best/ and last/ no longer share files
    flip_middle_byte(last_of(run) / "__0_0.distcp")
    code, out, _ = run_tool(tool, "verify", run)
    (line,) = [line for line in out.splitlines() if line.startswith("BAD")]
    assert code == tool.DAMAGED and "last/__0_0.distcp does not match its xxh3 checksum" in line, out
    assert out.endswith("2 checkpoints: 1 bad\n"), out

    # A file whose xxh3 its checksums give right and its sha256 wrong: a resume's read passes,
    # verify does not (it checks both).
    best = run / "checkpoints" / "best"
    manifest = json.loads((best / sharded.MANIFEST).read_text())
    manifest["files"][sharded.REST]["sha256"] = "0" * 64
    (best / sharded.MANIFEST).write_text(json.dumps(manifest))
    storage.for_folder(best.parent).read("best")
    code, out, _ = run_tool(tool, "verify", best)
    assert code == tool.DAMAGED and f"best/{sharded.REST} does not match its sha256 checksum" in out, out

    # A shard cut short, its checksums made to fit: `.metadata` points past its end.
    cut = shutil.copytree(last_of(straight), tmp_path / "cut")
    shard = cut / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])
    manifest = json.loads((cut / sharded.MANIFEST).read_text())
    manifest["files"][shard.name] = io.file_digests(shard)
    (cut / sharded.MANIFEST).write_text(json.dumps(manifest))
    code, out, _ = run_tool(tool, "verify", cut)
    assert code == tool.DAMAGED and "points at bytes" in out and "of __0_0.distcp, which has" in out, out


def test_a_directory_converts_to_a_file_that_resumes_exactly_on_one_process(straight, stopped, tmp_path, run_tool):
    file = tmp_path / "stopped.pt"
    code, out, err = run_tool(tool, "convert", last_of(stopped), file)
    assert code == 0 and "one file (trainer.strategy=ddp), epoch 0 step 10" in out, out + err
    code, out, _ = run_tool(tool, "verify", file)
    assert code == 0 and out.endswith("1 file: 1 ok\n"), out
    saved = torch.load(file, weights_only=True)
    assert saved["meta"]["converted_from"] == {"path": str(last_of(stopped)), "form": "sharded"}
    assert "strategy: ddp" in saved["config"] and isinstance(next(iter(saved["optimizer_state_dict"]["state"])), int)
    # Against the directory: the same tensors (the optimizer's compared by parameter name), one config key.
    code, out, _ = run_tool(tool, "diff", last_of(stopped), file)
    assert code == 1 and "config: 1 keys differ\n  trainer.strategy: fsdp -> ddp\n" in out, out
    assert "values: identical" in out and "tensors: identical (16)" in out, out

    # Resumed by a plain (ddp) run in one process, it ends where the run never stopped did, to the bit.
    train_in_process(tmp_path / "resumed", f"resume={file}", GO_ON)
    code, out, _ = run_tool(tool, "diff", last_of(straight), tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert "values: identical" in out and "tensors: identical (16)" in out, out


def test_a_file_converts_to_a_directory_that_resumes_exactly(straight, stopped, tmp_path, run_tool):
    file, directory = tmp_path / "stopped.pt", tmp_path / "again"
    assert run_tool(tool, "convert", last_of(stopped), file)[0] == 0
    code, out, err = run_tool(tool, "convert", file, directory)
    assert code == 0 and "a sharded checkpoint's directory (trainer.strategy=fsdp)" in out, out + err
    assert sorted(p.name for p in directory.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "checksums.json",
        "train_state.pt",
    ]
    code, out, _ = run_tool(tool, "verify", directory)
    assert code == 0 and "of its 3 files in its checksums.json" in out, out
    # There and back: the directory the run wrote, but for meta (not compared).
    code, out, _ = run_tool(tool, "diff", last_of(stopped), directory)
    assert code == 0 and out == "identical\n", out

    train_in_process(tmp_path / "resumed", f"resume={directory}", GO_ON)
    code, out, _ = run_tool(tool, "diff", last_of(straight), last_of(tmp_path / "resumed"))
    assert "values: identical" in out and "tensors: identical (16)" in out, out

    # Never over what is there; a directory becomes a .pt file and a file a directory without .pt;
    # a folder that is no checkpoint is said to be one.
    assert run_tool(tool, "convert", file, directory)[0] == tool.USAGE
    assert run_tool(tool, "convert", last_of(stopped), tmp_path / "x")[0] == tool.USAGE
    assert run_tool(tool, "convert", file, tmp_path / "x.pt")[0] == tool.USAGE
    code, _, err = run_tool(tool, "convert", stopped / "checkpoints", tmp_path / "x.pt")
    assert code == tool.UNREADABLE and "is a folder, not a sharded checkpoint's directory" in err, err


def test_compare_and_diff_see_shards_that_differ(straight, tmp_path, run_tool):
    same, changed = (shutil.copytree(straight, tmp_path / name) for name in ("same", "changed"))
    # One weight changed in the shards of `changed`'s last/, written as a run writes a directory
    # (its checksums right: only the tensors can tell).
    ckpt, _ = storage.for_folder(last_of(changed).parent).read("last")
    state = convert.whole(ckpt)
    name = next(iter(state["model_state_dict"]))
    weight = state["model_state_dict"][name].clone()
    weight.view(-1)[0] += 0.5
    tensors = {key: state[key] for key in sharded.SHARDED_KEYS}
    tensors["model_state_dict"] = {**tensors["model_state_dict"], name: weight}
    rest = torch.load(last_of(changed) / sharded.REST, weights_only=True)
    shutil.rmtree(last_of(changed))
    convert.write_directory(tensors, rest, last_of(changed))

    code, out, _ = run_tool(compare, straight, same)
    assert code == 0 and out.startswith("identical"), out
    code, out, _ = run_tool(compare, straight, changed)
    assert code == 1 and f"1 entries of the final state differ: model_state_dict.{name}" in out, out
    code, out, _ = run_tool(tool, "diff", last_of(straight), last_of(changed))
    assert code == 1 and f"model_state_dict.{name}: max abs difference 0.5" in out, out
