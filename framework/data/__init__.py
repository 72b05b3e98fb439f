"""Data: sources that give arrays or datasets, a seeded split, keyed augmentation and the loaders.

Randomness in the data path is keyed, not streamed. The shuffle of epoch e is drawn from a
generator seeded with (seed, e); the augmentation of sample i in epoch e is a function of
(seed, e, i). So the data seen at any step is a pure function of the seed, the epoch and the
position in it: nothing to carry in a checkpoint but two counters, nothing taken from the
global RNG, and the same batches whichever worker process loads them.

In-memory arrays (a TensorDataset: the built-in sources, a source returning (x, y)) are read a
batch at a time: the loader hands the dataset a whole batch of indices, cut with one indexing
operation and augmented with tensor operations over the batch (keyed_seeds: the hash of every
sample's key at once), optionally on the training device. The value of a sample does not depend
on the batch it falls in.

A user's own map-style Dataset gets the same guarantee for its random transforms when it draws
them from `sample_generator()` (or `sample_seed()`): keyed by (seed, epoch, index) of the sample
being loaded. Drawn from the global streams instead, they depend on the number of workers and
break exact resume (the README says how).

The names are re-exported here: configs name `framework.data.load_digits` and friends, and a
user's dataset calls `framework.data.sample_generator()`.
"""

from framework.data.augment import Augmented, shifts, window_offsets, window_starts, windows  # noqa: F401
from framework.data.keyed import (  # noqa: F401
    AUGMENT,
    EVAL,
    NOISE,
    SHUFFLE,
    SPLIT,
    TRANSFORM,
    WORKERS,
    keyed_generator,
    keyed_normal,
    keyed_seed,
    keyed_seeds,
    load_sample,
    sample_generator,
    sample_seed,
    unsigned_remainder,
)
from framework.data.loaders import (  # noqa: F401
    EpochBatches,
    EvalView,
    InMemory,
    InOrder,
    already_batched,
    eval_loader,
    resident_device,
    seed_worker,
    shard_size,
    train_loader,
)
from framework.data.sources import (  # noqa: F401
    Splits,
    load_diabetes,
    load_digits,
    load_npz,
    make_synthetic,
    num_classes_of,
    split,
    split_dataset,
    split_indices,
)
from framework.data.text import load_text  # noqa: F401
