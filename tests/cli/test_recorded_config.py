"""The config a run records (checkpoint, TensorBoard, an export) holds the values filled in from
the data, so that the model is rebuilt from the file alone; an export is written with the mode
every other file gets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from helpers import ROOT, read_tensorboard, run_cli
from hydra.utils import instantiate
from omegaconf import OmegaConf

from framework.cli import ckpt as ckpt_tool

# The default model (a CNN) on the digits: nothing on the command line says their shape.
FILLED = {"input_shape": [1, 8, 8], "num_classes": 10}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recorded") / "run"
    run_cli(folder, "trainer.max_epochs=1", "trainer.max_steps=3")  # TensorBoard on, as by default
    return folder


def rebuilt(config_text: str, state_dict: dict) -> torch.nn.Module:
    """The model from the recorded config alone, with the recorded weights (strict)."""
    model = instantiate(OmegaConf.to_container(OmegaConf.create(config_text).model))
    model.load_state_dict(state_dict)
    return model


def test_the_checkpoint_and_tensorboard_record_the_values_filled_in_from_the_data(run, capsys):
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    recorded = yaml.safe_load(ckpt["config"])["model"]
    assert {k: recorded[k] for k in FILLED} == FILLED
    assert sum(p.numel() for p in rebuilt(ckpt["config"], ckpt["model_state_dict"]).parameters()) > 0
    (text,) = read_tensorboard(run)["text"]
    assert yaml.safe_load(textwrap.dedent(text))["model"] == recorded
    capsys.readouterr()
    # The ckpt tool's main, in process (its command line: tests/cli/test_ckpt_tool.py).
    assert ckpt_tool.main(["inspect", str(run / "checkpoints" / "last.pt"), "--config"]) == 0
    shown = capsys.readouterr().out
    assert {k: yaml.safe_load(shown)["model"][k] for k in FILLED} == FILLED
    # What Hydra composed from the command line stays as the user gave it.
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["model"]["input_shape"] is None


def test_an_export_has_the_mode_of_every_other_file_and_rebuilds_the_model(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    source = run / "checkpoints" / "last.pt"
    safetensors, pt = tmp_path / "model.safetensors", tmp_path / "model.pt"
    exported = subprocess.run(
        [sys.executable, "-m", "framework.ckpt", "export", str(source), str(safetensors)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert ckpt_tool.main(["export", str(source), str(pt)]) == 0
    plain = tmp_path / "plain.txt"
    plain.write_text("written under the same umask\n")
    modes = {path.name: oct(os.stat(path).st_mode & 0o777) for path in (plain, source, pt, safetensors)}
    assert set(modes.values()) == {modes["plain.txt"]}, modes

    with safe_open(safetensors, framework="pt") as f:
        config_text = f.metadata()["config"]
    rebuilt(config_text, load_file(safetensors))
    from_pt = torch.load(pt, weights_only=True)
    rebuilt(from_pt["config"], from_pt["model_state_dict"])
