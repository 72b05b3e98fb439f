"""Migration without training: a current file is left alone, other programs' files are imported
(NumPy state only with the opt-in, torch's older format too), and what cannot fit is refused."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import DATA, THEIRS, tutorial_checkpoint

from framework.cli.ckpt import main as ckpt

# tests/data/checkpoint_format1.pt was written by framework 0.1.0 (commit 833b0e1) with
#   python -m framework model=mlp model.hidden=[32] data=synthetic data.source.n_samples=400
#     trainer.max_epochs=3 trainer.max_steps=7 logger=none seed=3
# and stopped mid-epoch: epoch 1, position 2 of 5.
FORMAT1 = DATA / "checkpoint_format1.pt"


def test_migrating_a_current_file_writes_nothing(tmp_path, capsys):
    current = tmp_path / "current.pt"
    assert ckpt(["migrate", str(FORMAT1), str(current)]) == 0
    assert ckpt(["migrate", str(current), str(tmp_path / "again.pt")]) == 0
    assert "already in format 2" in capsys.readouterr().out and not (tmp_path / "again.pt").exists()


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
