"""The built-in Transformer: shapes, causality, weight tying, sequences shorter than the block."""

from __future__ import annotations

import pytest
import torch

from framework.models import Transformer


def small(**changes) -> Transformer:
    torch.manual_seed(0)
    args = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8, dropout=0.0, tie_weights=True)
    return Transformer(**(args | changes)).eval()


def test_logits_have_a_row_per_position_and_a_column_per_token():
    model = small()
    idx = torch.randint(0, 11, (3, 16))
    assert model(idx).shape == (3, 16, 11)
    assert model(idx[:, :5]).shape == (3, 5, 11)  # shorter than block_size
    assert torch.allclose(model(idx[:, :5]), model(idx)[:, :5], atol=1e-6)  # a prefix's logits do not depend on T
    with pytest.raises(ValueError, match="longer than block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.int64))


def test_a_later_token_does_not_change_earlier_logits():
    model = small()
    idx = torch.randint(0, 11, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 11
    before, after = model(idx), model(changed)
    assert torch.equal(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])  # it does change its own and the later ones


def test_tied_weights_are_one_tensor_and_untied_two():
    tied = small(tie_weights=True)
    assert tied.head.weight is tied.token_embedding.weight
    untied = small(tie_weights=False)
    assert sum(p.numel() for p in tied.parameters()) == sum(p.numel() for p in untied.parameters()) - 11 * 8
    assert untied.head.weight.data_ptr() != untied.token_embedding.weight.data_ptr()
    # one tensor, so one gradient: what trains the head trains the embedding
    tied(torch.randint(0, 11, (2, 4))).sum().backward()
    assert tied.token_embedding.weight.grad is tied.head.weight.grad


def test_the_weights_come_from_the_torch_generator_alone():
    assert all(torch.equal(a, b) for a, b in zip(small().state_dict().values(), small().state_dict().values()))
    torch.manual_seed(1)
    other = Transformer(11, 16, 2, 2, 8, 0.0, True)
    assert not torch.equal(other.token_embedding.weight, small().token_embedding.weight)


def test_dropout_acts_in_training_only():
    model = small(dropout=0.5)
    idx = torch.randint(0, 11, (2, 16))
    assert torch.equal(model(idx), model(idx))  # eval
    model.train()
    assert not torch.equal(model(idx), model(idx))
