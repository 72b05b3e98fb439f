"""Format versions and migration: a real format-1 file upgraded and resumed from, a
newer file refused, and other programs' tutorial-layout checkpoints imported and resumed from."""

from __future__ import annotations

import pytest
import torch
from helpers import DATA, THEIRS, read_summary, train_in_process, tutorial_checkpoint

from framework.checkpoint import io
from framework.cli.ckpt import main as ckpt
from framework.runs.reproducibility import fingerprint

# tests/data/checkpoint_format1.pt was written by framework 0.1.0 (commit 833b0e1) with
#   python -m framework model=mlp model.hidden=[32] data=synthetic data.source.n_samples=400
#     trainer.max_epochs=3 trainer.max_steps=7 logger=none seed=3
# and stopped mid-epoch: epoch 1, position 2 of 5.
FORMAT1 = DATA / "checkpoint_format1.pt"
FORMAT1_RUN = ["model=mlp", "model.hidden=[32]", "data=synthetic", "data.source.n_samples=400",
               "trainer.max_epochs=3", "logger=none", "seed=3"]  # fmt: skip


@pytest.fixture(scope="module")
def format1_straight(tmp_path_factory):
    """The format-1 file's run, straight through, by this version of the code on this machine;
    and the checkpoint that run writes at the file's step (7) when stopped there."""
    runs = tmp_path_factory.mktemp("format1")
    train_in_process(runs / "straight", *FORMAT1_RUN)
    train_in_process(runs / "to_step_7", *FORMAT1_RUN, "trainer.max_steps=7")
    return runs / "straight", torch.load(runs / "to_step_7" / "checkpoints" / "last.pt", weights_only=True)


def resumed_like_this_machine(ckpt: dict, here_at_7: dict, tmp_path) -> dict:
    """Resume from `ckpt` to the end with the weights and optimizer state this machine computes
    for the first 7 steps. The file's were computed on another machine, and another CPU's
    kernels (AVX2 against AVX-512, say) may round the same steps differently in the last bit:
    a straight run here then ends elsewhere, whatever the file holds. All the rest of the file
    (random streams, data position, schedule, counters) is what this resume tests."""
    path = tmp_path / "like_this_machine.pt"
    torch.save({**ckpt, **{k: here_at_7[k] for k in ("model_state_dict", "optimizer_state_dict")}}, path)
    return train_in_process(tmp_path / "like_this_machine", f"resume={path}", "trainer.max_steps=null")


def test_a_format1_file_is_migrated_and_the_run_resumes_from_it_exactly(format1_straight, tmp_path, capsys):
    straight, here_at_7 = format1_straight
    migrated = tmp_path / "migrated.pt"
    assert ckpt(["migrate", str(FORMAT1), str(migrated)]) == 0
    assert "format 1 -> 2" in capsys.readouterr().out
    new = torch.load(migrated, weights_only=True)
    assert new["meta"]["format_version"] == 2 and new["meta"]["upgraded_from"] == [1]
    assert new["meta"]["origin"] == "trained" and new["meta"]["exact_resume"] is True
    old = torch.load(FORMAT1, weights_only=True)
    assert fingerprint(new["model_state_dict"], new["optimizer_state_dict"]) == fingerprint(
        old["model_state_dict"], old["optimizer_state_dict"]
    )
    io.load_checked(migrated)  # its CRC32s match the new contents

    summary = train_in_process(tmp_path / "run", f"resume={migrated}", "trainer.max_steps=null")
    assert summary["status"] == "completed" and summary["resumes"][0]["global_step"] == 7
    assert resumed_like_this_machine(new, here_at_7, tmp_path)["fingerprint"] == read_summary(straight)["fingerprint"]
    if fingerprint(old["model_state_dict"]) == fingerprint(here_at_7["model_state_dict"]):
        assert summary["fingerprint"] == read_summary(straight)["fingerprint"]  # this machine rounds alike


def test_a_format1_file_is_also_resumed_from_as_it_is(format1_straight, tmp_path, caplog):
    straight, here_at_7 = format1_straight
    with caplog.at_level("INFO", logger="framework"):
        summary = train_in_process(tmp_path / "run", f"resume={FORMAT1}", "trainer.max_steps=null")
    assert "upgraded in memory from format 1 to 2" in caplog.text
    migrated = tmp_path / "migrated.pt"
    assert ckpt(["migrate", str(FORMAT1), str(migrated)]) == 0
    again = train_in_process(tmp_path / "from_migrated", f"resume={migrated}", "trainer.max_steps=null")
    assert summary["fingerprint"] == again["fingerprint"]  # upgraded in memory as on disk


@pytest.fixture
def newer(tmp_path):
    """A file from a future version: format 3."""
    ckpt_ = torch.load(FORMAT1, weights_only=True)
    ckpt_["meta"] = {**ckpt_["meta"], "format_version": 3, "framework_version": "9.1.0"}
    path = tmp_path / "newer.pt"
    torch.save(ckpt_, path)
    return path


def test_a_newer_format_is_refused_by_migrate_and_by_resume(newer, tmp_path, capsys):
    assert ckpt(["migrate", str(newer), str(tmp_path / "out.pt")]) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "format 3, written by framework 9.1.0" in err and "reads formats 1 to 2" in err
    assert not (tmp_path / "out.pt").exists()
    from framework.config.errors import ConfigError

    with pytest.raises(ConfigError, match=r"format 3, written by framework 9.1.0.*Read it with framework 9.1.0"):
        train_in_process(tmp_path / "run", f"resume={newer}")


def test_an_imported_tutorial_file_is_resumed_from_and_says_it_is_not_exact(tmp_path, capsys, caplog):
    src = tmp_path / "plain.pt"
    tutorial_checkpoint(src, epoch=1, with_streams=False)
    dst = tmp_path / "imported.pt"
    assert ckpt(["migrate", str(src), str(dst), *THEIRS]) == 0  # weights_only is enough: no opt-in
    out = capsys.readouterr().out
    assert "Not bit-exact" in out and "no torch, numpy, python random stream(s): seeded from seed 0" in out

    with caplog.at_level("WARNING", logger="framework"):
        summary = train_in_process(tmp_path / "run", f"resume={dst}")
    assert "was imported from another program's checkpoint" in caplog.text and "not bit for bit" in caplog.text
    assert summary["status"] == "completed" and summary["follows_original_trajectory"] is False
    assert summary["resumes"][0]["exact"] is False and summary["resumes"][0]["global_step"] == 5
    assert summary["epochs_completed"] == 4
