"""Gradient accumulation in one optimizer step (engine/step.py train_step), without training:
micro-batches make the gradient of their concatenation, one micro-batch is the step as it was,
and under DDP the micro-batches before the last skip the all-reduce."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist

from framework.engine.step import mixed_precision
from framework.engine.step import train_step as framework_train_step
from framework.engine.training import in_groups
from framework.tasks.classification import Classification
from framework.tasks.task import samples_in

SIZES = [16, 16, 16, 7]  # a short last micro-batch, as an epoch's last group can have


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    x, y = torch.randn(sum(SIZES), 3, 4), torch.randint(0, 5, (sum(SIZES),))
    return model, x, y


def split(x: torch.Tensor, y: torch.Tensor) -> list:
    return list(zip(x.split(SIZES), y.split(SIZES)))


def step(model, micro_batches, lr: float = 0.1, **kwargs) -> torch.Tensor:
    """train_step with SGD: the gradients stay in .grad after it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    autocast, scaler = mixed_precision("32", torch.device("cpu"))
    return framework_train_step(model, Classification(), micro_batches, optimizer, scaler, autocast, None, **kwargs)


def gradients(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_micro_batches_give_the_gradient_and_loss_of_their_concatenation():
    whole, x, y = model_and_data()
    parts, _, _ = model_and_data()
    whole_loss = step(whole, [(x, y)])
    parts_loss = step(parts, split(x, y))
    for a, b in zip(gradients(whole), gradients(parts)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert a.abs().max() > 1e-3  # a gradient, not zeros on both sides
    assert torch.allclose(whole_loss, parts_loss, rtol=1e-6)
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_equal_weights_would_be_wrong_with_a_short_last_micro_batch():
    """The teeth of the weighting: an unweighted mean of the four micro-batch losses (each 1/4)
    is another gradient when the last one is short."""
    whole, x, y = model_and_data()
    step(whole, [(x, y)])
    expected = gradients(whole)
    model, _, _ = model_and_data()
    task = Classification()
    model.zero_grad()
    for batch in split(x, y):
        (task.loss(model, batch) / len(SIZES)).backward()
    assert not all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7) for a, p in zip(expected, model.parameters()))


def test_one_micro_batch_is_the_step_without_accumulation_to_the_bit():
    ours, x, y = model_and_data()
    theirs, _, _ = model_and_data()
    loss = step(ours, [(x, y)])
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    plain = torch.nn.functional.cross_entropy(theirs(x), y)
    plain.backward()
    optimizer.step()
    assert torch.equal(loss, plain.detach())  # unscaled: the loss itself
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)


class CountedLoss:
    """A task whose batches hold no tensor (samples_in: 0): each loss is the weight sum times a number."""

    def loss(self, model, batch):
        return model.weight.sum() * batch["times"]


def test_micro_batches_without_a_sample_count_weigh_alike():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    autocast, scaler = mixed_precision("32", torch.device("cpu"))
    loss = framework_train_step(
        model, CountedLoss(), [{"times": 1.0}, {"times": 3.0}], optimizer, scaler, autocast, None
    )
    assert loss.item() == pytest.approx(4.0)  # (2 * 1 + 2 * 3) / 2
    assert model.weight.grad.tolist() == [[2.0, 2.0]]


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (10, 4, [4, 4, 2]),  # the last group holds what is left
        (8, 4, [4, 4]),
        (3, 4, [3]),  # fewer batches than a group
        (5, 1, [1, 1, 1, 1, 1]),
        (0, 4, []),
    ],
)
def test_in_groups_cuts_consecutive_batches(count, size, expected):
    groups = list(in_groups(iter(range(count)), size))
    assert [len(g) for g in groups] == expected
    assert [b for g in groups for b in g] == list(range(count))


@pytest.mark.parametrize(
    ("batch", "count"),
    [
        (torch.zeros(7, 3), 7),
        ((torch.zeros(5, 2), torch.zeros(5)), 5),
        ([torch.zeros(4), torch.zeros(9)], 4),  # the first tensor's
        ({"image": torch.zeros(6, 1, 8, 8), "label": torch.zeros(6)}, 6),
        ({"meta": {"id": torch.zeros(3)}, "x": torch.zeros(8)}, 3),  # nested, first found
        ({"name": "a", "x": torch.zeros(2, 5)}, 2),  # non-tensors skipped
        (torch.tensor(1.5), 1),  # a scalar: one sample
        ((torch.zeros(0, 3), torch.zeros(4)), 4),  # an empty tensor counts no samples
        ({"times": 1.0}, 0),
        ("text", 0),
    ],
)
def test_samples_in(batch, count):
    assert samples_in(batch) == count


# ---- under DDP: a single-process gloo group ----
@pytest.fixture
def process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def counted_ddp(model) -> tuple[torch.nn.parallel.DistributedDataParallel, list]:
    """DDP over `model` with a comm hook that counts the all-reduces it runs."""
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    reduced = []

    def count(state, bucket):
        reduced.append(bucket.index())
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda done: done.value()[0])

    ddp.register_comm_hook(None, count)
    return ddp, reduced


@pytest.mark.parametrize("skips", [True, False])
def test_under_ddp_the_micro_batches_before_the_last_skip_the_all_reduce(process_group, skips):
    model, x, y = model_and_data()
    ddp, reduced = counted_ddp(model)
    no_sync = ddp.no_sync if skips else contextlib.nullcontext  # False: the control, every one reduces
    step(ddp, split(x, y), no_sync=no_sync)
    buckets = len(set(reduced))
    assert buckets >= 1
    assert len(reduced) == buckets * (1 if skips else len(SIZES))
    whole, _, _ = model_and_data()
    step(whole, [(x, y)])
    for a, b in zip(gradients(whole), gradients(model)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
