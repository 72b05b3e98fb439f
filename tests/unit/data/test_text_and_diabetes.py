"""The text source (character windows for a language model) and the diabetes regression set."""

from __future__ import annotations

import pytest
import torch

from framework import data
from framework.data.keyed import TRANSFORM


@pytest.fixture(scope="module")
def help_topics():
    return data.load_text(None, block_size=64, val_fraction=0.05, test_fraction=0.05)


def text_of(dataset, tokens) -> str:
    return "".join(dataset.vocabulary[i] for i in tokens.tolist())


def test_the_default_text_is_pythons_help_topics(help_topics):
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    assert len(text) > 400_000
    train, val, test = help_topics["train"], help_topics["val"], help_topics["test"]
    assert train.vocabulary == val.vocabulary == "".join(sorted(set(text)))
    assert train.vocab_size == len(set(text))
    # contiguous: train is the start of the text, val follows it, test follows val
    n_train = len(text) - 2 * round(len(text) * 0.05)
    assert text_of(train, train.tokens) == text[:n_train]
    assert text_of(val, val[0][0]) == text[n_train : n_train + 64]
    test_start = len(text) - round(len(text) * 0.05)
    assert text_of(test, test.tensors[0].flatten()) == text[test_start : test_start + len(test) * 64]
    assert len(train) == (n_train - 1) // 64


def test_the_vocabulary_covers_characters_found_only_in_val_or_test(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text("ab" * 120 + "x" * 30 + "€" * 30, encoding="utf-8")
    splits = data.load_text(str(file), block_size=8, val_fraction=0.1, test_fraction=0.1)
    assert splits["train"].vocabulary == splits["test"].vocabulary == "abx€" and splits["val"].vocab_size == 4
    assert set(splits["train"].tokens.tolist()) == {0, 1}
    assert set(splits["val"].tensors[0].flatten().tolist()) == {2}
    assert set(splits["test"].tensors[1].flatten().tolist()) == {3}


def test_windows_are_next_token_pairs(help_topics):
    for name in ("train", "val"):
        x, y = data.load_sample(help_topics[name], 3, (0, TRANSFORM, 0, 3))
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (64,)
        assert torch.equal(x[1:], y[:-1])


def test_a_training_window_is_a_function_of_its_key(help_topics):
    train = help_topics["train"]

    def window(seed, epoch, index):
        return data.load_sample(train, index, (seed, TRANSFORM, epoch, index))[0]

    assert torch.equal(window(0, 2, 5), window(0, 2, 5))
    others = window(0, 3, 5), window(1, 2, 5), window(0, 2, 6)  # another epoch, seed, index
    assert not any(torch.equal(window(0, 2, 5), other) for other in others)
    # the start is anywhere in the training text, not on a grid
    starts = {int(window(0, epoch, 0)[0]) for epoch in range(50)}
    assert len(starts) > 10


def test_val_windows_are_fixed_and_consecutive(help_topics):
    val = help_topics["val"]
    x, y = val.tensors
    assert len(val) == len(x) > 100 and torch.equal(x.flatten()[1:], y.flatten()[:-1])
    assert torch.equal(x[1], data.load_sample(val, 1, (0, TRANSFORM, 7, 1))[0])  # no key changes it
    again = data.load_text(None, block_size=64, val_fraction=0.05, test_fraction=0.05)["val"]
    assert torch.equal(again.tensors[0], x)


def test_a_text_file_and_its_errors(tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("hello world, " * 100, encoding="utf-8")
    splits = data.load_text(str(file), block_size=16, val_fraction=0.1, test_fraction=0.1)
    assert splits["train"].vocabulary == " ,dehlorw" and len(splits["val"]) == (130 - 1) // 16
    with pytest.raises(FileNotFoundError, match=r"^data\.source\.path: no such file: .*missing\.txt$"):
        data.load_text(str(tmp_path / "missing.txt"), 16, 0.1, 0.1)
    with pytest.raises(ValueError, match=r"data\.source\.block_size: the validation text \(130 characters\)"):
        data.load_text(str(file), 200, 0.1, 0.1)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="data.source.path: .* is not UTF-8 text"):
        data.load_text(str(tmp_path / "latin1.txt"), 1, 0.0, 0.0)


def test_diabetes_is_the_442_patients():
    x, y = data.load_diabetes(standardize=False)
    assert x.shape == (442, 10) and y.shape == (442, 1) and x.dtype == y.dtype == torch.float32
    assert x[0, 0] == 59 and y[0, 0] == 151  # the first patient's age and target
    zx, zy = data.load_diabetes(standardize=True)
    assert torch.allclose(zx.mean(0), torch.zeros(10), atol=1e-5) and torch.allclose(zx.std(0), torch.ones(10))
    assert torch.allclose(zy, (y - y.mean()) / y.std(), atol=1e-5)
