"""The moving average of the weights (`trainer.ema`), in process: in the checkpoint, restored
exactly (and a resume that skips it differs), used for validation and best.pt without touching
training, and exported by `python -m framework.ckpt export --weights ema|raw`.

The small MLP on the digits (with dropout), 20 optimizer steps an epoch, two epochs; a
model-only periodic file every 10 steps, which carries the average too.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import read_jsonl, read_summary, train_in_process
from hydra.utils import instantiate
from omegaconf import OmegaConf

from framework.cli import ckpt as ckpt_tool
from framework.cli.compare import compare as differences
from framework.engine.ema import N_AVERAGED, without_count

EMA = (
    "model=mlp",
    "trainer.max_epochs=2",
    "logger=none",
    "trainer.ema.decay=0.9",
    "checkpoint.every_n_steps=10",
    "checkpoint.model_only=true",
)
GO_ON = "trainer.max_steps=null"  # the resume trains past the first command's stopping point
# A run without EMA: tests/integration/test_ckpt_tool.py's, trained once for both in a session.
NO_EMA = ("model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_epochs=1", "seed=0")


@pytest.fixture
def straight(trained_run):
    """Two epochs straight through, validated with the average (shared: copy it to change it)."""
    return trained_run(*EMA)


@pytest.fixture
def stopped_mid(trained_run):
    """The same run stopped at step 29 (epoch 1, batch 9)."""
    return trained_run(*EMA, "trainer.max_steps=29")


@pytest.fixture
def evaluated_raw(trained_run):
    """The straight run validated with the raw weights: the average is kept but not evaluated."""
    return trained_run(*EMA, "trainer.ema.evaluate=false")


def last(run) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def epoch_val_losses(run) -> list[float]:
    return [r["val/loss"] for r in read_jsonl(run) if r["event"] == "epoch"]


def resumed(stopped_mid, tmp_path, monkeypatch, skip: str = ""):
    """A copy of the stopped run, resumed to the end; `skip`: pieces restore leaves out."""
    run = shutil.copytree(stopped_mid, tmp_path / "resumed")
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", skip)
    train_in_process(run, *EMA, f"resume={run}", GO_ON)
    return run


def test_the_average_is_in_every_checkpoint_under_the_models_keys(straight):
    saved = last(straight)
    average = saved["ema_state_dict"]
    assert set(average) == {*saved["model_state_dict"], N_AVERAGED}
    assert int(average[N_AVERAGED]) == saved["global_step"] == 40
    assert not same_tensors(without_count(average), saved["model_state_dict"])  # an average, not a copy
    periodic = torch.load(straight / "checkpoints" / "step_00000030.pt", weights_only=True)
    assert periodic["meta"]["kind"] == "model" and int(periodic["ema_state_dict"][N_AVERAGED]) == 30


def test_a_run_stopped_mid_epoch_and_resumed_ends_with_the_same_bits_average_included(
    straight, stopped_mid, tmp_path, monkeypatch
):
    run = resumed(stopped_mid, tmp_path, monkeypatch)
    assert differences(straight, run) == []
    assert same_tensors(last(run)["ema_state_dict"], last(straight)["ema_state_dict"])
    check = read_summary(run)["resumes"][-1]["val_check"]  # checkpoint.verify_on_resume, with the average
    assert check["identical"] and check["after_restore"] == check["recorded"] == last(stopped_mid)["val_metrics"]


def test_a_resume_that_skips_the_average_differs_in_it_alone(straight, stopped_mid, tmp_path, monkeypatch):
    run = resumed(stopped_mid, tmp_path, monkeypatch, skip="ema")
    assert differences(straight, run) != []  # the history: validation used the average
    assert epoch_val_losses(run)[-1] != epoch_val_losses(straight)[-1]
    assert not same_tensors(last(run)["ema_state_dict"], last(straight)["ema_state_dict"])
    assert same_tensors(last(run)["model_state_dict"], last(straight)["model_state_dict"])
    assert not read_summary(run)["resumes"][-1]["val_check"]["identical"]  # the resume check saw it


def test_validation_and_best_pt_use_the_average_and_training_never_does(straight, evaluated_raw):
    assert same_tensors(last(straight)["model_state_dict"], last(evaluated_raw)["model_state_dict"])
    assert read_summary(straight)["fingerprint"] == read_summary(evaluated_raw)["fingerprint"]
    with_average, with_raw = epoch_val_losses(straight), epoch_val_losses(evaluated_raw)
    assert all(a != b for a, b in zip(with_average, with_raw, strict=True))
    for run, losses in ((straight, with_average), (evaluated_raw, with_raw)):
        best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        assert best["best_metric"] == min(losses)


# ---- python -m framework.ckpt export and inspect -----------------------------------------------


@pytest.fixture
def ckpt(capsys):
    """ckpt(*args) -> (exit code, stdout, stderr) of the ckpt tool's main, in process."""

    def run(*args):
        code = ckpt_tool.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def loaded(path, config: str) -> dict:
    """The weights an exported file holds, loaded with strict checking into the plain model that
    `config` (a checkpoint's) describes, built afresh."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(path)
    else:
        exported = torch.load(path, weights_only=True)
        assert exported["meta"]["kind"] == "model" and "ema_state_dict" not in exported
        weights = exported["model_state_dict"]
    model = instantiate(OmegaConf.create(config).model)  # its shapes were filled in from the data
    model.load_state_dict(weights, strict=True)
    return model.state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_writes_the_average_or_the_raw_weights_for_the_plain_model(straight, tmp_path, ckpt, suffix):
    source = straight / "checkpoints" / "last.pt"
    saved = torch.load(source, weights_only=True)
    average, raw = without_count(saved["ema_state_dict"]), saved["model_state_dict"]
    cases = {"default": ([], average), "ema": (["--weights", "ema"], average), "raw": (["--weights", "raw"], raw)}
    for name, (flags, expected) in cases.items():
        out_path = tmp_path / f"{name}{suffix}"
        code, out, err = ckpt("export", source, out_path, *flags)
        assert (code, err) == (0, "")
        chosen = "the raw weights" if expected is raw else "the moving average"
        assert f" bytes, {chosen} (from {source}, epoch 2 step 40)" in out
        assert same_tensors(loaded(out_path, saved["config"]), expected), name
    if suffix == ".pt":
        meta = torch.load(tmp_path / "default.pt", weights_only=True)["meta"]
        assert (meta["weights"], meta[N_AVERAGED]) == ("ema", 40)


def test_export_defaults_to_the_weights_the_run_evaluated_with(straight, evaluated_raw, tmp_path, ckpt):
    periodic = straight / "checkpoints" / "step_00000030.pt"  # model-only, with the average
    assert ckpt("export", periodic, tmp_path / "periodic.pt")[0] == 0
    exported = torch.load(tmp_path / "periodic.pt", weights_only=True)
    expected = without_count(torch.load(periodic, weights_only=True)["ema_state_dict"])
    assert same_tensors(exported["model_state_dict"], expected) and exported["meta"][N_AVERAGED] == 30
    # trainer.ema.evaluate=false: validation used the raw weights, so export does too.
    assert ckpt("export", evaluated_raw / "checkpoints" / "last.pt", tmp_path / "raw.pt")[0] == 0
    exported = torch.load(tmp_path / "raw.pt", weights_only=True)
    assert exported["meta"]["weights"] == "raw"
    assert same_tensors(exported["model_state_dict"], last(evaluated_raw)["model_state_dict"])


def test_exporting_an_average_that_is_not_there_is_refused_in_one_line(trained_run, straight, tmp_path, ckpt):
    without = trained_run(*NO_EMA) / "checkpoints" / "last.pt"
    code, out, err = ckpt("export", without, tmp_path / "out.pt", "--weights", "ema")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"Error: {without} holds no moving average of the weights")
    assert not (tmp_path / "out.pt").exists()
    assert ckpt("export", without, tmp_path / "out.pt")[0] == 0  # by default: its raw weights
    assert torch.load(tmp_path / "out.pt", weights_only=True)["meta"]["weights"] == "raw"
    # An export of the average holds no raw weights.
    assert ckpt("export", straight / "checkpoints" / "last.pt", tmp_path / "average.pt")[0] == 0
    code, out, err = ckpt("export", tmp_path / "average.pt", tmp_path / "raw.pt", "--weights", "raw")
    assert (code, out) == (2, "") and "is an export of the moving average: the raw weights are not in it" in err


def test_inspect_shows_the_average(straight, evaluated_raw, trained_run, tmp_path, ckpt):
    code, out, _ = ckpt("inspect", straight / "checkpoints" / "last.pt")
    assert code == 0 and "  ema             40 updates averaged, decay 0.9; evaluated with\n" in out
    assert "    ema_state_dict           7 tensors         85,003 values" in out  # the MLP's 6 and the count
    out = ckpt("inspect", evaluated_raw / "checkpoints" / "last.pt")[1]
    assert "  ema             40 updates averaged, decay 0.9; not evaluated with (trainer.ema.evaluate false)\n" in out
    assert ckpt("export", straight / "checkpoints" / "last.pt", tmp_path / "average.pt")[0] == 0
    out = ckpt("inspect", tmp_path / "average.pt")[1]
    assert "  ema             model_state_dict is the moving average (40 updates, decay 0.9)\n" in out
    assert " ema " not in ckpt("inspect", trained_run(*NO_EMA) / "checkpoints" / "last.pt")[1]
