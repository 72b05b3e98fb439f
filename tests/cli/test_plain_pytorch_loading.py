"""A checkpoint's weights load into plain PyTorch, in an interpreter that never imports the framework."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import checkpointer, make_state, payload_maker


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
