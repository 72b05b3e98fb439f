"""Language modelling: next-token cross-entropy over sequences; loss, perplexity, bits per token,
token accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from framework.config.errors import ConfigError
from framework.tasks.checks import first_bad
from framework.tasks.task import Task, pair


class LanguageModel(Task):
    """Samples (tokens [T], next tokens [T]) of integer ids; the model gives [B, T, vocabulary]
    logits. model.vocab_size comes from the dataset's `vocab_size` (or the largest id + 1 of
    arrays), model.block_size from the sample length."""

    metrics = {"loss": "min", "perplexity": "min", "bits_per_token": "min", "token_acc": "max"}

    def loss(self, model, batch):
        x, y = pair(batch, "language_model")
        return F.cross_entropy(model(x).flatten(0, -2), y.flatten())

    def sums(self, model, batch):
        x, y = pair(batch, "language_model")
        logits = model(x).flatten(0, -2).float()
        y = y.flatten()
        return {
            "loss": F.cross_entropy(logits, y, reduction="sum").item(),
            "correct": (logits.argmax(dim=1) == y).sum().item(),
            "tokens": y.numel(),
        }

    def metrics_from(self, sums):
        loss = sums["loss"] / sums["tokens"]
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),  # a float overflows beyond e**709
            "bits_per_token": loss / math.log(2),
            "token_acc": sums["correct"] / sums["tokens"],
        }

    def check_arrays(self, inputs, targets):
        x, y = super().check_arrays(inputs, targets)
        where = "data.source"
        if x.shape != y.shape or x.dim() != 2:
            raise ConfigError(
                f"{where}: a language model takes tokens [N, T] and next tokens [N, T], got {list(x.shape)} and "
                f"{list(y.shape)}"
            )
        for name, ids in (("tokens", x), ("next tokens", y)):
            check_ids(ids, f"{where}: {name}")
        return x.to(torch.int64), y.to(torch.int64)

    def check_sample(self, sample, where):
        x, y = pair(sample, "language_model", where)
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.shape != y.shape or x.dim() != 1:
            raise ConfigError(
                f"{where}: a sample must be (tokens [T], next tokens [T]), got {list(x.shape)} and {list(y.shape)}"
            )
        check_ids(torch.stack([x, y]), where)

    def model_facts(self, splits):
        x, _ = pair(splits.first, "language_model")
        vocab_size = getattr(splits.whole, "vocab_size", None)
        if vocab_size is None:
            vocab_size = largest_id(splits.whole) + 1
        for name, sample in (("training", splits.first), ("validation", splits.val), ("test", splits.test)):
            if not isinstance(sample, tuple):  # a split: its first sample, when it has one
                sample = sample[0] if len(sample) else None
            ids = torch.stack([torch.as_tensor(t) for t in pair(sample, "language_model")]) if sample else None
            if ids is not None and int(ids.max()) >= vocab_size:
                raise ConfigError(
                    f"data.source: the first {name} sample has token id {int(ids.max())}, outside the "
                    f"vocabulary of {vocab_size}"
                )
        return {"vocab_size": int(vocab_size), "block_size": len(x)}


def check_ids(ids: torch.Tensor, where: str) -> None:
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ConfigError(f"{where}: token ids must be integers, got {ids.dtype}")
    bad = first_bad(ids < 0)
    if bad is not None:
        raise ConfigError(f"{where}: token ids must be 0 or more, sample {bad} has {int(ids[bad].min())}")


def largest_id(dataset) -> int:
    """The largest token id of in-memory arrays (a TensorDataset, maybe cut by Subset)."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        dataset = dataset.dataset
    tensors = getattr(dataset, "tensors", None)
    if tensors is None:
        raise ConfigError(
            "data.source: the dataset does not say its vocabulary (no vocab_size attribute); set model.vocab_size=N"
        )
    return int(max(int(t.max()) for t in tensors))
