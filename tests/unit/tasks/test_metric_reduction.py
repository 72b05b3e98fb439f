"""Evaluation metrics reduced exactly: each batch's sums added in batch order give, to float
rounding, what one batch of the whole split gives, and what the textbook definitions give
(scikit-learn's r2_score, mean errors and macro F1; perplexity e**loss; bits per token loss/ln 2)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_modules import DictClassification

from framework.engine.step import evaluate
from framework.tasks.classification import Classification
from framework.tasks.language_model import LanguageModel
from framework.tasks.regression import Regression

N = 101  # samples: batches of 8 leave a short last one


def metrics(task, model, dataset, batch_size: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return evaluate(model, task, loader, torch.device("cpu"), contextlib.nullcontext)


class Identity(nn.Module):
    """The input is the model's output: the test chooses the predictions."""

    def forward(self, x):
        return x


class DictLogits(nn.Module):
    def forward(self, image, rows):
        return image + rows


def cases():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (N, 6), generator=g)
    lm = nn.Embedding(12, 12)  # a bigram table: the logits after each token
    nn.init.normal_(lm.weight, generator=g)
    logits, labels = torch.randn(N, 10, generator=g), torch.randint(0, 10, (N,), generator=g)
    predicted, target = torch.randn(N, 3, generator=g), torch.randn(N, 3, generator=g)
    columns = {"image": logits, "rows": torch.randn(N, 10, generator=g) * 0.1, "label": labels}
    return {
        "classification": (Classification(), Identity(), TensorDataset(logits, labels)),
        "regression": (Regression(), Identity(), TensorDataset(predicted, target)),
        "language_model": (LanguageModel(), lm, TensorDataset(tokens[:, :-1], tokens[:, 1:])),
        "dict": (DictClassification(), DictLogits(), DictSamples(columns)),
    }


class DictSamples(torch.utils.data.Dataset):
    def __init__(self, columns: dict):
        self.columns = columns

    def __len__(self):
        return len(self.columns["label"])

    def __getitem__(self, i):
        return {key: column[i] for key, column in self.columns.items()}


@pytest.mark.parametrize("name", ["classification", "regression", "language_model", "dict"])
def test_sums_over_batches_in_order_equal_one_big_batchs_to_float_rounding(name):
    task, model, dataset = cases()[name]
    whole = metrics(task, model, dataset, N)
    assert set(whole) == set(task.metrics)
    for batch_size in (1, 8):
        batched = metrics(task, model, dataset, batch_size)
        assert batched.keys() == whole.keys()
        for key in whole:
            assert math.isclose(batched[key], whole[key], rel_tol=1e-6, abs_tol=1e-12), (key, batched[key], whole[key])


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_metrics_are_scikit_learns(outputs):
    g = torch.Generator().manual_seed(outputs)
    target = torch.randn(N, outputs, generator=g)
    predicted = target + 0.7 * torch.randn(N, outputs, generator=g)
    found = metrics(Regression(), Identity(), TensorDataset(predicted, target), 8)
    y, p = target.double().numpy(), predicted.double().numpy()
    assert found["r2"] == pytest.approx(r2_score(y, p), rel=1e-9)
    assert found["mse"] == pytest.approx(mean_squared_error(y, p), rel=1e-9)
    assert found["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-9)


def test_r2_of_a_target_of_any_shape_averages_every_target_value():
    g = torch.Generator().manual_seed(5)
    target = torch.randn(N, 2, 3, generator=g)
    predicted = target + torch.randn(N, 2, 3, generator=g)
    found = metrics(Regression(), Identity(), TensorDataset(predicted, target), 8)
    expected = r2_score(target.reshape(N, 6).double().numpy(), predicted.reshape(N, 6).double().numpy())
    assert found["r2"] == pytest.approx(expected, rel=1e-9)


def test_a_language_models_perplexity_and_bits_per_token_follow_from_its_loss():
    task, model, dataset = cases()["language_model"]
    found = metrics(task, model, dataset, 8)
    x, y = dataset.tensors
    logits = model(x).flatten(0, 1)
    assert found["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y.flatten()).item(), rel=1e-6)
    assert found["perplexity"] == math.exp(found["loss"])
    assert found["bits_per_token"] == found["loss"] / math.log(2)
    assert found["token_acc"] == (logits.argmax(1) == y.flatten()).double().mean().item()


def test_classification_metrics_are_the_mean_loss_and_accuracy():
    task, model, dataset = cases()["classification"]
    found = metrics(task, model, dataset, 8)
    logits, labels = dataset.tensors
    assert found["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert found["acc"] == (logits.argmax(1) == labels).sum().item() / N


def test_a_user_tasks_tensor_sums_reduce_to_scikit_learns_macro_f1():
    task, model, dataset = cases()["dict"]
    found = metrics(task, model, dataset, 8)
    columns = dataset.columns
    predicted = (columns["image"] + columns["rows"]).argmax(1)
    assert found["f1"] == pytest.approx(f1_score(columns["label"], predicted, average="macro"), rel=1e-12)
