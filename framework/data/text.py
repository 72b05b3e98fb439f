"""Character-level text: a corpus cut into windows of tokens for a language model.

The vocabulary is the sorted set of characters of the whole text, so that every split's
characters are in it; a token is a character's index in it. The text is split contiguously
(train, then val, then test), so that no validation window overlaps a training one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from framework.data.keyed import sample_seed


def load_text(path: str | None, block_size: int, val_fraction: float, test_fraction: float) -> dict:
    """{"train", "val", "test"} datasets of (x, y) windows of `block_size` tokens, y being x
    shifted by one. The text is the UTF-8 file at `path`, or with None the text of Python's own
    help topics (pydoc_data, about 465,000 characters that ship with CPython)."""
    text = read_text(path)
    vocabulary = "".join(sorted(set(text)))
    tokens = torch.searchsorted(code_points(vocabulary), code_points(text))
    n_val, n_test = round(len(tokens) * val_fraction), round(len(tokens) * test_fraction)
    n_train = len(tokens) - n_val - n_test
    for name, n in (("training", n_train), ("validation", n_val)):
        if n <= block_size:
            raise ValueError(
                f"data.source.block_size: the {name} text ({n} characters) is too short for one window of {block_size}"
            )
    parts = tokens[:n_train], tokens[n_train : n_train + n_val], tokens[n_train + n_val :]
    return {
        "train": RandomWindows(parts[0], block_size, vocabulary),
        "val": ConsecutiveWindows(parts[1], block_size, vocabulary),
        "test": ConsecutiveWindows(parts[2], block_size, vocabulary),
    }


def read_text(path: str | None) -> str:
    if path is None:
        from pydoc_data.topics import topics  # imported here: the module is large

        return "".join(topics[key] for key in sorted(topics))
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.source.path: no such file: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data.source.path: {file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text:
        raise ValueError(f"data.source.path: {file} is empty")
    return text


def code_points(text: str) -> torch.Tensor:
    """The characters' Unicode code points, int64, in one pass over the bytes (no Python loop)."""
    return torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).to(torch.int64)


class RandomWindows(Dataset):
    """Training windows at random starts: sample i of an epoch starts at a position drawn from
    its key (sample_seed: the run's seed, the epoch, i), so that the windows do not depend on
    the loader's workers and a resumed run draws the same ones. An epoch has as many windows as
    fit end to end in the text: it sees about the whole text once."""

    def __init__(self, tokens: torch.Tensor, block_size: int, vocabulary: str):
        self.tokens, self.block_size = tokens, block_size
        self.vocabulary, self.vocab_size = vocabulary, len(vocabulary)

    def __len__(self):
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, index: int):
        start = sample_seed() % (len(self.tokens) - self.block_size)
        window = self.tokens[start : start + self.block_size + 1]
        return window[:-1], window[1:]


class ConsecutiveWindows(TensorDataset):
    """Validation or test windows: the split's text cut end to end, in order, nothing random; each
    token is predicted once, but the split's first and a remainder shorter than a window."""

    def __init__(self, tokens: torch.Tensor, block_size: int, vocabulary: str):
        n = max(0, (len(tokens) - 1) // block_size)
        x = tokens[: n * block_size].view(n, block_size)
        y = tokens[1 : n * block_size + 1].view(n, block_size)
        super().__init__(x, y)
        self.block_size = block_size
        self.vocabulary, self.vocab_size = vocabulary, len(vocabulary)
