"""Each built-in task's checks of its data before training: bad data is refused in one line that
names the sample (or the arrays), good data passes and comes back converted."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from framework.config.errors import ConfigError
from framework.data import Splits
from framework.tasks.classification import Classification
from framework.tasks.language_model import LanguageModel
from framework.tasks.regression import Regression

FIRST = "data.source: the first training sample"  # what the run calls the sample it checks


def refused(call, *args, says: str) -> str:
    with pytest.raises(ConfigError) as e:
        call(*args)
    message = str(e.value)
    assert says in message and "\n" not in message, message
    return message


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 2, 2)


# ---- classification ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("labels", "says"),
    [
        (torch.tensor([0.0, 1.0, 2.0, 1.5]), "labels must be whole class indices, got 1.5 in sample 3"),
        (torch.tensor([0, 1, -1, 2]), "labels must be class indices 0, 1, ..., got -1 in sample 2"),
        (torch.eye(4), "labels must have shape [N] (class indices), got [4, 4]: one-hot labels? give y.argmax(1)"),
        (torch.tensor([True, False, True, False]), "labels must be integer class indices, got torch.bool"),
    ],
)
def test_classification_refuses_labels_that_are_not_class_indices(labels, says):
    refused(Classification().check_arrays, images(), labels, says=says)


def test_classification_refuses_non_finite_or_flat_inputs_and_mismatched_lengths():
    x = images()
    x[1, 0, 1, 1] = math.nan
    labels = torch.tensor([0, 1, 2, 3])
    refused(Classification().check_arrays, x, labels, says="1 input values are NaN or infinite (the first in sample 1)")
    refused(Classification().check_arrays, torch.rand(4), labels, says="inputs must have shape [N, features...]")
    refused(Classification().check_arrays, images(3), labels, says="3 inputs but 4 targets")
    refused(Classification().check_arrays, images(0), labels[:0], says="the data set is empty")


def test_classification_takes_whole_float_and_small_integer_labels_as_int64():
    for labels in (torch.tensor([0.0, 3.0, 1.0, 2.0]), torch.tensor([0, 3, 1, 2], dtype=torch.uint8)):
        x, y = Classification().check_arrays(images().double(), labels)
        assert (x.dtype, y.dtype) == (torch.float32, torch.int64) and y.tolist() == [0, 3, 1, 2]


def test_classification_refuses_a_sample_that_is_not_float_input_and_class_index():
    task = Classification()
    task.check_sample((torch.rand(1, 2, 2), 3), FIRST)
    task.check_sample((torch.rand(1, 2, 2), torch.tensor(3)), FIRST)
    for sample in [(torch.rand(1, 2, 2), 1.5), (torch.zeros(1, 2, 2, dtype=torch.int64), 3), (torch.rand(4), [1, 2])]:
        refused(task.check_sample, sample, FIRST, says=f"{FIRST}: a sample must be (input: a float tensor")


# ---- regression -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_regression_refuses_a_target_that_is_not_finite_naming_its_sample(bad):
    targets = torch.zeros(4, 2)
    targets[2, 1] = bad
    refused(
        Regression().check_arrays,
        images(),
        targets,
        says=f"regression targets must be finite, sample 2 has [0.0, {bad}]",
    )


def test_regression_takes_number_targets_of_any_shape_as_float32():
    x, y = Regression().check_arrays(images(), torch.tensor([1, 2, 3, 4]))
    assert y.dtype == torch.float32 and y.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert Regression().check_arrays(images(), torch.rand(4, 2, 3))[1].shape == (4, 2, 3)
    refused(
        Regression().check_arrays, images(), torch.ones(4, dtype=torch.bool), says="must be numbers, got torch.bool"
    )


def test_regression_refuses_a_sample_with_a_non_float_input_or_target_or_a_non_finite_target():
    task = Regression()
    task.check_sample((torch.rand(3), torch.tensor([0.5, 1.0])), FIRST)
    refused(task.check_sample, (torch.rand(3), torch.tensor(2)), FIRST, says=f"{FIRST}: a sample must be (input")
    refused(task.check_sample, (torch.arange(3), torch.tensor(2.0)), FIRST, says=f"{FIRST}: a sample must be (input")
    refused(
        task.check_sample,
        (torch.rand(3), torch.tensor([1.0, math.nan])),
        FIRST,
        says=f"{FIRST}: the regression target is not finite",
    )


def test_regression_fills_the_models_output_width_from_the_target():
    first = (torch.rand(5), torch.rand(2, 3))
    data = TensorDataset(torch.rand(4, 5), torch.rand(4, 2, 3))
    facts = Regression().model_facts(Splits(data, data, data, first, data))
    assert facts == {"input_shape": [5], "num_classes": 6}


# ---- language model ---------------------------------------------------------------------
def test_language_model_refuses_token_ids_that_are_not_non_negative_integers():
    task, ids = LanguageModel(), torch.tensor([[1, 2, 3], [4, 5, 6]])
    refused(
        task.check_arrays, ids.float(), ids, says="data.source: tokens: token ids must be integers, got torch.float32"
    )
    negative = ids.clone()
    negative[1, 2] = -3
    refused(
        task.check_arrays, ids, negative, says="data.source: next tokens: token ids must be 0 or more, sample 1 has -3"
    )
    refused(task.check_arrays, ids, ids[:, :2], says="a language model takes tokens [N, T] and next tokens [N, T]")
    refused(
        task.check_sample, (ids[0], ids[0][:2]), FIRST, says=f"{FIRST}: a sample must be (tokens [T], next tokens [T])"
    )
    refused(task.check_sample, (ids[0], -ids[1]), FIRST, says=f"{FIRST}: token ids must be 0 or more")


class Windows(Dataset):
    """Token windows with a vocabulary of their own, as data=text gives them."""

    def __init__(self, windows: torch.Tensor, vocab_size: int):
        self.windows, self.vocab_size = windows, vocab_size

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return self.windows[i, :-1], self.windows[i, 1:]


def test_language_model_refuses_token_ids_outside_the_vocabulary_naming_the_split():
    good, bad = Windows(torch.randint(0, 5, (3, 9)), 5), Windows(torch.tensor([[1, 2, 7, 0]]), 5)
    facts = LanguageModel().model_facts(Splits(good, good, good, good[0], good))
    assert facts == {"vocab_size": 5, "block_size": 8}
    for name, splits in [
        ("training", Splits(bad, good, good, bad[0], good)),
        ("validation", Splits(good, bad, good, good[0], good)),
        ("test", Splits(good, good, bad, good[0], good)),
    ]:
        says = f"data.source: the first {name} sample has token id 7, outside the vocabulary of 5"
        refused(LanguageModel().model_facts, splits, says=says)


def test_language_model_takes_the_vocabulary_of_arrays_from_their_largest_id():
    x, y = LanguageModel().check_arrays(
        torch.tensor([[1, 2], [3, 4]], dtype=torch.int32), torch.tensor([[2, 3], [4, 9]])
    )
    data = TensorDataset(x, y)
    assert x.dtype == torch.int64 and LanguageModel().model_facts(Splits(data, data, data, data[0], data)) == {
        "vocab_size": 10,
        "block_size": 2,
    }


# ---- a dict sample given to a built-in task ----------------------------------------------
@pytest.mark.parametrize("task", [Classification(), Regression(), LanguageModel()], ids=lambda t: type(t).__name__)
def test_a_built_in_task_refuses_dict_samples_in_one_line_naming_the_sample(task):
    sample = {"image": torch.rand(1, 2, 2), "label": torch.tensor(3)}
    message = refused(task.check_sample, sample, FIRST, says=f"{FIRST}: task=")
    assert "the data gives a dict" in message and "task._target_" in message
