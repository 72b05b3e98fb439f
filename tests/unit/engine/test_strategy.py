"""framework/engine/strategy.py: which modules FSDP shards as units, and sharding in one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from framework.engine import strategy
from framework.models import MLP, Transformer


def test_the_blocks_of_an_mlp_are_its_linear_layers():
    model = MLP(input_shape=[1, 8, 8], num_classes=10)
    assert strategy.blocks(model) == [m for m in model.net if isinstance(m, torch.nn.Linear)]


def test_a_transformers_blocks_are_its_layers_not_their_inner_containers():
    model = Transformer(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=16, dropout=0.0, tie_weights=True)
    assert strategy.blocks(model) == list(model.blocks)


def test_a_plain_model_is_not_sharded_and_fsdp_is_not_imported_to_say_so():
    # Importing FSDP costs about a second: a run that shards nothing must never pay it.
    code = (
        "import sys, torch; from framework.engine import strategy; "
        "assert not strategy.is_sharded(torch.nn.Linear(2, 2)); "
        "print('torch.distributed.fsdp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def one_process_group():
    made = strategy.one_process_group()
    assert made and dist.get_world_size() == 1
    yield
    dist.destroy_process_group()


def test_fsdp_in_one_process_shards_in_place_and_trains_as_the_plain_model(one_process_group):
    torch.manual_seed(0)
    plain = MLP(input_shape=[1, 8, 8], num_classes=10, dropout=0.0)
    torch.manual_seed(0)
    model = MLP(input_shape=[1, 8, 8], num_classes=10, dropout=0.0)
    net, no_sync = strategy.spread(model, "fsdp", torch.device("cpu"))
    assert net is model and strategy.is_sharded(model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for m in (plain, net):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    sharded_grads = [p.grad.full_tensor() for p in net.parameters()]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(sharded_grads, [p.grad for p in plain.parameters()]))
    with no_sync():  # gradient accumulation: the reduction waits for the last micro-batch
        pass
    assert not strategy.one_process_group()  # a group exists already: none is made
