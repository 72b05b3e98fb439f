"""Format versions and migration: a real format-1 file upgraded and resumed from, a
newer file refused, and other programs' tutorial-layout checkpoints imported and resumed from."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from helpers import DATA, read_summary, train_in_process

from framework.checkpoint import io
from framework.checkpoint.migrate import build_state, experiment_config
from framework.cli.ckpt import main as ckpt
from framework.runs.reproducibility import fingerprint

# tests/data/checkpoint_format1.pt was written by framework 0.1.0 (commit 833b0e1) with
#   python -m framework model=mlp model.hidden=[32] data=synthetic data.source.n_samples=400
#     trainer.max_epochs=3 trainer.max_steps=7 logger=none seed=3
# and stopped mid-epoch: epoch 1, position 2 of 5.
FORMAT1 = DATA / "checkpoint_format1.pt"
FORMAT1_RUN = ["model=mlp", "model.hidden=[32]", "data=synthetic", "data.source.n_samples=400",
               "trainer.max_epochs=3", "logger=none", "seed=3"]  # fmt: skip
# What a tutorial's loop trains: the framework's MLP on synthetic data, SGD as the config has it.
THEIRS = ["model=mlp", "model.hidden=[32]", "data=synthetic", "data.source.n_samples=400", "trainer.max_epochs=4",
          "logger=none"]  # fmt: skip


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


def test_migrating_a_current_file_writes_nothing(tmp_path, capsys):
    current = tmp_path / "current.pt"
    assert ckpt(["migrate", str(FORMAT1), str(current)]) == 0
    assert ckpt(["migrate", str(current), str(tmp_path / "again.pt")]) == 0
    assert "already in format 2" in capsys.readouterr().out and not (tmp_path / "again.pt").exists()


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


def tutorial_checkpoint(path, epoch: int, with_streams: bool, prefix: str = "") -> dict:
    """What the PyTorch tutorial's loop saves: weights (maybe DDP/compile-prefixed), optimizer
    state, epoch and loss, and maybe the random streams as torch, NumPy and Python return them."""
    cfg = experiment_config(THEIRS)
    state, _ = build_state(cfg)
    model, optimizer = state.model, state.optimizer
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 8, 8)).logsumexp(1).mean().backward()
        optimizer.step()
    saved = {
        "epoch": epoch,
        "model_state_dict": {prefix + k: v for k, v in model.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": 0.25,
    }
    if with_streams:
        saved.update(rng=torch.get_rng_state(), np_rng=np.random.get_state(), py_rng=random.getstate())
    torch.save(saved, path)
    return saved


def test_a_tutorial_file_with_numpy_state_needs_the_opt_in_naming_it(tmp_path, capsys):
    src = tmp_path / "checkpoint_epoch_2.pt"
    saved = tutorial_checkpoint(src, epoch=2, with_streams=True, prefix="module._orig_mod.")
    dst = tmp_path / "imported.pt"
    assert ckpt(["migrate", str(src), str(dst), *THEIRS]) == 5
    err = capsys.readouterr().err
    assert f"--unpickle-numpy {src}" in err and "numpy.ndarray" in err and not dst.exists()
    assert ckpt(["inspect", str(src)]) == 5  # the other commands point at migrate
    assert "migrate SRC DST model=... optimizer=... --unpickle-numpy SRC" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save({}, other)
    assert ckpt(["migrate", str(src), str(dst), *THEIRS, "--unpickle-numpy", str(other)]) == 5  # names another file
    assert not dst.exists()

    assert ckpt(["migrate", str(src), str(dst), *THEIRS, "--unpickle-numpy", str(src)]) == 0
    imported = torch.load(dst, weights_only=True)
    meta = imported["meta"]
    assert meta["origin"] == "imported" and meta["exact_resume"] is False
    assert meta["imported"]["source"] == str(src.resolve())
    assert {"numpy random stream", "python random stream", "torch random stream"} <= set(meta["imported"]["restored"])
    assert (imported["epoch"], imported["loader_state"]) == (2, {"epoch": 2, "position": 0})
    weights = {k.removeprefix("module._orig_mod."): v for k, v in saved["model_state_dict"].items()}
    assert imported["model_state_dict"].keys() == weights.keys()
    assert all(torch.equal(imported["model_state_dict"][k], v) for k, v in weights.items())
    assert torch.equal(imported["rng_state"], saved["rng"])
    assert imported["numpy_rng_state"]["keys"].tolist() == saved["np_rng"][1].tolist()
    assert imported["optimizer_state_dict"]["state"][0]["momentum_buffer"].equal(
        saved["optimizer_state_dict"]["state"][0]["momentum_buffer"]
    )


def test_a_tutorial_file_in_torchs_older_format_is_imported_the_same_way(tmp_path, capsys):
    """torch.save(..., _use_new_zipfile_serialization=False), or torch before 1.6: not a zip
    archive, so it cannot be memory-mapped or scanned; torch names its NumPy objects one at a time."""
    src = tmp_path / "checkpoint_epoch_2.pt"
    saved = tutorial_checkpoint(src, epoch=2, with_streams=True)
    torch.save(saved, src, _use_new_zipfile_serialization=False)
    dst = tmp_path / "imported.pt"
    assert ckpt(["migrate", str(src), str(dst), *THEIRS]) == 5
    assert f"--unpickle-numpy {src}" in capsys.readouterr().err and not dst.exists()
    assert ckpt(["migrate", str(src), str(dst), *THEIRS, "--unpickle-numpy", str(src)]) == 0
    imported = torch.load(dst, weights_only=True)
    assert imported["numpy_rng_state"]["keys"].tolist() == saved["np_rng"][1].tolist()


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


def test_files_named_by_epoch_are_ordered_by_number(tmp_path, capsys):
    folder = tmp_path / "theirs"
    folder.mkdir()
    for epoch in (2, 9, 10):
        tutorial_checkpoint(folder / f"checkpoint_epoch_{epoch}.pt", epoch=epoch, with_streams=False)
    dst = tmp_path / "imported.pt"
    assert ckpt(["migrate", str(folder), str(dst), *THEIRS]) == 0
    assert torch.load(dst, weights_only=True)["epoch"] == 10  # not epoch_9, the last by name


@pytest.mark.parametrize(
    "overrides,says",
    [
        (["model=cnn"], "does not fit model=CNN: the checkpoint's weights do not fit the model: missing keys"),
        ([*THEIRS, "optimizer=adamw"], "optimizer state does not fit optimizer=AdamW"),
        ([*THEIRS, "optimizer.momentum=0.5"], "its settings differ from the config's: give optimizer.momentum=0.9"),
    ],
)
def test_a_file_that_does_not_fit_the_experiment_is_refused(tmp_path, capsys, overrides, says):
    src = tmp_path / "plain.pt"
    tutorial_checkpoint(src, epoch=1, with_streams=False)
    assert ckpt(["migrate", str(src), str(tmp_path / "out.pt"), *overrides]) == 8
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not (tmp_path / "out.pt").exists()


def test_overrides_that_do_not_compose_are_a_usage_error(tmp_path, capsys):
    src = tmp_path / "plain.pt"
    tutorial_checkpoint(src, epoch=1, with_streams=False)
    assert ckpt(["migrate", str(src), str(tmp_path / "out.pt"), *THEIRS, "model.depth=3"]) == 2
    err = capsys.readouterr().err
    assert "Could not override 'model.depth'" in err and err.count("\n") == 1


def test_a_hostile_file_is_never_unpickled_even_with_the_opt_in(tmp_path, capsys):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "hostile.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "epoch": 1, "x": Payload()}, src)
    assert ckpt(["migrate", str(src), str(tmp_path / "out.pt"), "--unpickle-numpy", str(src)]) == 5
    assert "posix.system" in capsys.readouterr().err and not marker.exists()


def test_a_run_of_framework_0_1_with_augmentation_noise_is_told_its_noise_changed(caplog):
    """0.2 draws the noise a batch at a time, with other bits: such a resume cannot follow the
    original trajectory, and says so (the format-1 file itself has no noise: it resumes exactly)."""
    from omegaconf import OmegaConf

    from framework.engine.run import noise_drawn_otherwise

    ckpt = torch.load(FORMAT1, weights_only=True)
    cfg = OmegaConf.create(ckpt["config"])
    assert cfg.data.augment.noise_std == 0 and not noise_drawn_otherwise(ckpt, cfg)
    cfg.data.augment.noise_std = 0.1
    with caplog.at_level("WARNING", logger="framework"):
        assert noise_drawn_otherwise(ckpt, cfg)
    assert "written by framework 0.1.0, whose augmentation noise" in caplog.text
    ckpt["meta"]["framework_version"] = "0.2.0"
    assert not noise_drawn_otherwise(ckpt, cfg)
