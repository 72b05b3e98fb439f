"""A checkpoint's weights load into plain PyTorch, in an interpreter that never imports the framework."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import CONF
from omegaconf import OmegaConf

from framework.checkpoint import Checkpointer, formats
from framework.config.schema import CheckpointConfig
from framework.engine.state import TrainState


def make_state() -> TrainState:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))


def payload_maker(state: TrainState):
    def make(kind: str) -> dict:
        meta = {"format_version": formats.FORMAT_VERSION, "kind": kind}
        if kind == "model":
            return {
                "epoch": state.epoch,
                "global_step": state.global_step,
                "model_state_dict": state.model_weights(),
                "config": "seed: 0\n",
                "meta": meta,
            }
        return {**state.capture(), "config": "seed: 0\n", "meta": meta}

    return make


def checkpointer(tmp_path, resumed_from=None, **policy) -> Checkpointer:
    """The `checkpoint=default` policy (its YAML: the values are written there only), with changes."""
    default = OmegaConf.load(CONF / "checkpoint" / "default.yaml")
    default.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.structured(CheckpointConfig), default, policy)
    return Checkpointer(cfg, tmp_path / "checkpoints", resumed_from=resumed_from)


def test_weights_load_into_plain_pytorch_without_the_framework(tmp_path):
    state = make_state()
    checkpointer(tmp_path).save(
        payload_maker(state), event="epoch", epoch=1, step=1, position=0, metric=None, improved=False
    )
    script = f"""
import sys, torch
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
model.load_state_dict(torch.load({str(tmp_path / "checkpoints" / "last.pt")!r}, weights_only=True)["model_state_dict"])
assert not any(m.startswith("framework") for m in sys.modules), "framework was imported"
print(float(model[0].weight.sum()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(float(state.model[0].weight.detach().sum()))
