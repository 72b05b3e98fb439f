"""User callbacks (`callbacks` in the config): one's own logic at the loop's named points,
without forking the loop.

    callbacks:
      weights:                                   # the callback's name: its key in checkpoints
        _target_: mypackage.WeightHistogram      # any class; the other keys are its arguments
        every_n_steps: 50

A callback has any of these methods, each called with a `RunView` on every rank:

    on_fit_start(run)       training is about to start (or go on, resumed)
    on_step_end(run)        after each optimizer step
    on_validation_end(run)  after a validation (run.metrics holds its val/ metrics)
    on_save(run)            after a save point (run.saved names the files)
    on_fit_end(run)         training is over (before the test split is evaluated)

A callback that has `state_dict()` and `load_state_dict(state)` is saved in every checkpoint
(under `callbacks_state`, by its name; plain values and tensors, so that the file still loads
with weights_only=True) and restored on resume. Callbacks watch: `run` is a read-only view, and
a callback that needs random numbers takes them from `run.generator()`, never from the global
streams that training draws from. An exception inside a callback stops the run in one line that
names it.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from framework.config.errors import ConfigError
from framework.data import keyed_seed
from framework.engine.step import RunStopped
from framework.tracking.metrics_logger import check_arguments, one_line

log = logging.getLogger("framework")

POINTS = ("on_fit_start", "on_step_end", "on_validation_end", "on_save", "on_fit_end")

# The tag of the callbacks' random streams (framework/data/keyed.py: tags 1-7; ranks' streams 8).
CALLBACK_STREAMS = 9


class CallbackFailed(RunStopped):
    """A callback raised: the run stops, naming it."""


class RunView:
    """What a callback sees of the run: read it, do not change it (the model is the live one;
    changing its weights would change the trajectory that resume and reproducibility promise)."""

    def __init__(self, name: str, training, callbacks: Callbacks):
        self._name, self._training, self._callbacks = name, training, callbacks
        self.saved: list[str] = []  # on_save: the files that save point wrote

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return self._training.state.global_step

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self._training.state.epoch

    @property
    def metrics(self) -> MappingProxyType:
        """The newest validation's metrics: an epoch's end's (train/loss, lr, val/...), or those of a
        validation inside an epoch (val/...); empty before the first."""
        return MappingProxyType(dict(self._callbacks.latest))

    @property
    def model(self) -> torch.nn.Module:
        """The model being trained (the plain module, not its DDP or compiled wrapper)."""
        return self._training.model

    @property
    def run_dir(self) -> Path:
        return self._training.run_dir

    @property
    def rank(self) -> int:
        return self._training.rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self._training.rank == 0

    def generator(self) -> torch.Generator:
        """A generator keyed by (seed, this callback's name, step): the same numbers at the same
        step in every run of the experiment, resumed or not, and nothing drawn from training's."""
        key = keyed_seed(self._training.cfg.seed, CALLBACK_STREAMS, zlib.crc32(self._name.encode()), self.step)
        return torch.Generator().manual_seed(key % 2**63)


class Callbacks:
    """The callbacks the config names, in its order, and the calls at the named points."""

    def __init__(self, section: DictConfig | None, training):
        self.named: dict[str, object] = build_callbacks(section)
        self.views = {name: RunView(name, training, self) for name in self.named}
        self.wanted = {point: [n for n, cb in self.named.items() if hasattr(cb, point)] for point in POINTS}
        # The newest validation's metrics, as the views show them (in checkpoints: engine/state.py).
        self.latest: dict = {}

    def validated(self, metrics: dict) -> None:
        """After a validation that counts: the views show its metrics, and on_validation_end is called."""
        self.latest = dict(metrics)
        self.call("on_validation_end")

    def call(self, point: str, saved: list[str] | None = None) -> None:
        for name in self.wanted[point]:
            view = self.views[name]
            view.saved = saved or []
            try:
                getattr(self.named[name], point)(view)
            except Exception as e:
                raise CallbackFailed(
                    f"callback {name} ({type(self.named[name]).__name__}) failed in {point} at step {view.step}: "
                    f"{type(e).__name__}: {one_line(e)}"
                ) from e

    def state_dict(self) -> dict:
        """Each stateful callback's state, by its name; one that a checkpoint cannot hold is refused
        here, naming the callback, rather than written into a file that would not load."""
        states = {}
        for name, cb in self.named.items():
            if not hasattr(cb, "state_dict"):
                continue
            where = f"callback {name} ({type(cb).__name__}) failed in state_dict at step {self.views[name].step}"
            try:
                states[name] = cb.state_dict()
            except Exception as e:
                raise CallbackFailed(f"{where}: {type(e).__name__}: {one_line(e)}") from e
            odd = not_plain(states[name])
            if odd is not None:
                raise CallbackFailed(
                    f"{where}: its state holds {odd}, which a checkpoint cannot hold "
                    "(torch.load(weights_only=True) reads tensors, numbers, strings, lists, tuples and dicts of them)"
                )
        return states

    def load_state_dict(self, saved: dict) -> None:
        """Each stateful callback takes its saved state; one the checkpoint has no state for
        (added since) starts fresh, and says so."""
        for name, cb in self.named.items():
            if not hasattr(cb, "load_state_dict"):
                continue
            if name not in saved:
                log.warning("callback %s has no state in the checkpoint: it starts fresh", name)
                continue
            try:
                cb.load_state_dict(saved[name])
            except Exception as e:
                raise CallbackFailed(
                    f"callback {name} ({type(cb).__name__}) failed in load_state_dict: {type(e).__name__}: "
                    f"{one_line(e)}"
                ) from e


def check_callbacks(section: DictConfig | None) -> dict[str, DictConfig]:
    """The `callbacks` section's entries that are on (null or false: off), each a section with an
    importable `_target_` that takes its other keys; refused in one line naming `callbacks.NAME`.
    Nothing is built: the run checks this before it loads any data."""
    chosen = {}
    for name, node in (section or {}).items():
        if node is None or node is False:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"callbacks.{name}={node!r}: a callback is a section with a _target_ (a class)")
        check_arguments(f"callbacks.{name}", node)
        chosen[str(name)] = node
    return chosen


def build_callbacks(section: DictConfig | None) -> dict[str, object]:
    """The `callbacks` section's entries, built; a wrong key, an import error or a failing
    constructor is refused in one line naming `callbacks.NAME`."""
    built = {}
    for name, node in check_callbacks(section).items():
        try:
            built[name] = instantiate(node)
        except InstantiationException as e:
            raise ConfigError(
                f"callbacks.{name}._target_={node._target_}: cannot build it ({one_line(e.__cause__ or e)})"
            ) from e
    return built


# What torch.load(weights_only=True) reads back: these exact types (a subclass, such as NumPy's
# float64, is pickled as its own class and refused), tensors, and these containers of them.
PLAIN_VALUES = (type(None), bool, int, float, complex, str, bytes)
PLAIN_TORCH = (torch.Tensor, torch.dtype, torch.Size, torch.device)
CONTAINERS = (list, tuple, set, dict, OrderedDict)


def not_plain(value: object, path: str = "") -> str | None:
    """The first value inside `value` that a weights_only checkpoint cannot hold, in words (its type
    and where it is); None if there is none."""
    if type(value) in PLAIN_VALUES or isinstance(value, PLAIN_TORCH):
        return None
    kind = type(value)
    if kind not in CONTAINERS:
        return f"a {kind.__module__}.{kind.__qualname__} at {path or 'its top'}"
    if isinstance(value, dict):
        for key, item in value.items():
            found = not_plain(key, f"{path}[{key!r}] (the key)") or not_plain(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    for index, item in enumerate(value):
        found = not_plain(item, f"{path}[{index}]")
        if found:
            return found
    return None
