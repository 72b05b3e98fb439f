"""A checkpoint's two forms, each into the other, in one process and without a process group:
a sharded checkpoint directory (trainer.strategy=fsdp; framework/checkpoint/directories.py) and
one file (framework/checkpoint/io.py). Also a directory's entries as whole tensors, for the
tools that compare and export (framework/cli/ckpt.py, framework/cli/compare.py).

    DIR -> FILE.pt   the model and optimizer that the checkpoint's own config describes are built
                     plain, the shards are loaded into them (resharded to one process), and
                     their state is written as a run with trainer.strategy=ddp writes it: the
                     optimizer's keyed by parameter number; every other entry as it is.
    FILE.pt -> DIR   the reverse: that state written by DCP as one rank's shard, with
                     train_state.pt and checksums.json, committed as a run commits a directory.

Either sets the config's trainer.strategy to the one that writes such a checkpoint (a resume
goes on with it) and records its source in meta.converted_from. The world size stays the one
that trained it: a 2-rank directory's file resumes on one process only with
allow_config_changes=true, as the directory itself would.

Every tensor is whole in this process's memory on the way. This module imports
torch.distributed.checkpoint (a second): the tools import it only where they meet a directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.distributed.checkpoint.api import CheckpointException

from framework.checkpoint import dcp_io, io
from framework.checkpoint.directories import ShardedDirectories, digests_of, first_line, shard_files
from framework.checkpoint.errors import CheckpointError
from framework.checkpoint.sharded import SHARDED_KEYS, Shards
from framework.config.resolved import config_from_text
from framework.engine import sharded_state
from framework.engine.build import build_model, build_optimizer
from framework.engine.state import weight_problems
from framework.runs import layout

CONVERTED_FROM = "converted_from"  # meta's record of a conversion: {"path": ..., "form": "sharded" or "file"}
# The strategy whose runs write each form.
FILE_STRATEGY, DIRECTORY_STRATEGY = "ddp", "fsdp"


# ---- a directory's entries, whole ---------------------------------------------------------------
def whole(ckpt: dict, keys: tuple[str, ...] = SHARDED_KEYS) -> dict:
    """`ckpt` with those of its entries `keys` that a directory holds as shards (sharded.Shards)
    read whole into this process: plain tensors; the optimizer's state keyed by parameter name."""
    shards = {key: value for key, value in ckpt.items() if key in keys and isinstance(value, Shards)}
    out = {key: value for key, value in ckpt.items() if key != "sharded_keys"}
    if shards:
        folder = next(iter(shards.values())).folder
        with one_process():
            loaded = dcp_io.load_whole(folder, tuple(shards), next(iter(shards.values())).metadata)
        out.update({key: loaded.get(key, {}) for key in shards})
    return out


@contextlib.contextmanager
def one_process():
    """DCP warns, at each load or save without a process group, that it assumes one process: so it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled|unavailable)")
        yield


def parameter_names(optimizer_state: object) -> list[str] | None:
    """The parameter names an optimizer state keyed by name lists, in order; None where it is keyed by number."""
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    if not isinstance(groups, list):
        return None
    names = [p for group in groups if isinstance(group, dict) for p in group.get("params", [])]
    return names if names and all(isinstance(p, str) for p in names) else None


def comparable(a: dict, b: dict) -> tuple[dict, dict]:
    """Two checkpoints as diff and compare compare them: a directory's shards read whole, and a
    file's optimizer state keyed by the parameter names of a directory's (optimizers_keyed_alike)."""
    return optimizers_keyed_alike(whole(a), whole(b))


def optimizers_keyed_alike(a: dict, b: dict) -> tuple[dict, dict]:
    """Two whole checkpoints, where one's optimizer state is keyed by parameter name (a
    directory's) and the other's by number (a file's): the file's keyed by the names of the
    directory's, in their order. Both take that order from model.parameters(), so number i is
    the i-th name when both are of one model and optimizer (if not, their param_groups differ)."""
    key = "optimizer_state_dict"
    names_a, names_b = parameter_names(a.get(key)), parameter_names(b.get(key))
    if names_a and not names_b and isinstance(b.get(key), dict):
        b = {**b, key: sharded_state.keyed_by_name(b[key], names_a)}
    elif names_b and not names_a and isinstance(a.get(key), dict):
        a = {**a, key: sharded_state.keyed_by_name(a[key], names_b)}
    return a, b


# ---- converting ------------------------------------------------------------------------------------
def to_file(ckpt: dict, source: Path, out: Path) -> dict:
    """Write checkpoint `ckpt`, read from the directory `source`, as the file `out`; returns its payload."""
    cfg = config_of(ckpt, source)
    model, optimizer = plain_model_and_optimizer(cfg)
    state = whole(ckpt)
    load_weights(model, state["model_state_dict"], source)
    # Loaded whole, as torch's own state dict: sharded_state.load_optimizer would fill only the
    # keys the fresh optimizer has, and lose those a scheduler adds (initial_lr).
    load_optimizer(optimizer, keyed_by_number(state["optimizer_state_dict"], model, optimizer, source), source)
    payload = {key: value for key, value in ckpt.items() if key != "sharded_keys"}
    payload.update(
        model_state_dict=model.state_dict(),
        optimizer_state_dict=optimizer.state_dict(),
        config=with_strategy(cfg, FILE_STRATEGY),
        meta=converted_meta(ckpt, source, "sharded"),
    )
    io.write(payload, out)
    return payload


def to_directory(ckpt: dict, source: Path, out: Path) -> dict:
    """Write checkpoint `ckpt`, read from the file `source`, as the directory `out` (one rank's
    shard of every tensor); returns what its train_state.pt holds."""
    cfg = config_of(ckpt, source)
    model, optimizer = plain_model_and_optimizer(cfg)
    load_weights(model, ckpt["model_state_dict"], source)
    load_optimizer(optimizer, ckpt["optimizer_state_dict"], source)
    tensors = {
        "model_state_dict": sharded_state.model_state(model),
        "optimizer_state_dict": sharded_state.optimizer_state(model, optimizer),
    }
    rest = {key: value for key, value in ckpt.items() if key not in tensors}
    rest.update(
        config=with_strategy(cfg, DIRECTORY_STRATEGY),
        meta=converted_meta(ckpt, source, "file"),
        sharded_keys=sorted(tensors),
    )
    write_directory(tensors, rest, out)
    return rest


def write_directory(tensors: dict, rest: dict, out: Path) -> None:
    """`tensors` by DCP, then train_state.pt (`rest`) and checksums.json, fsynced, renamed to
    `out`: the commit of directories.py (ShardedDirectories.commit), in one process. Not listed
    in any index.json: a directory that no index lists is checked against its own manifest."""
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    io.check_room(folder, io.expected_size(tensors) + io.expected_size(rest), f"to write {out}")
    tmp = folder / layout.temporary(out.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with one_process():
            dcp_io.save(tensors, tmp, no_dist=True)
        ShardedDirectories(folder).commit(tmp, out.name, digests_of(tmp, shard_files(tmp, 0)), rest)
    except CheckpointException as e:  # a BaseException: DCP's failures, by rank
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write {out}: {first_line(e)}") from e
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(io.write_failure(out, e)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def config_of(ckpt: dict, source: Path):
    return config_from_text(ckpt["config"], str(source))


def plain_model_and_optimizer(cfg) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and optimizer of a checkpoint's config, on the CPU, neither wrapped nor sharded.
    Its model section holds the values the run filled in from the data: nothing is read but it."""
    model = build_model(cfg.model, {})
    return model, build_optimizer(cfg.optimizer, model)


def load_weights(model: torch.nn.Module, saved: dict, source: Path) -> None:
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = weight_problems(own, {key: tuple(value.shape) for key, value in saved.items()}, strict=False)
    if problems:
        raise CheckpointError(f"{source}: its weights do not fit the model its config builds: {' | '.join(problems)}")
    model.load_state_dict(saved)


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, source: Path) -> None:
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: its optimizer state does not fit the optimizer its config builds: {e}") from e


def keyed_by_number(saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, source: Path) -> dict:
    """An optimizer state keyed by parameter name (a directory's) keyed as torch keys it: by each
    parameter's place in this optimizer's param_groups."""
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    number = {name_of[id(p)]: i for i, p in enumerate(parameters)}
    groups = saved.get("param_groups", [])
    named = [*saved.get("state", {}), *(name for group in groups for name in group["params"])]
    unknown = sorted({str(name) for name in named} - set(number))
    if unknown:
        raise CheckpointError(
            f"{source}: its optimizer state names parameters the model its config builds does not have: "
            + ", ".join(unknown)
        )
    return {
        "state": {number[name]: value for name, value in saved.get("state", {}).items()},
        "param_groups": [{**group, "params": [number[name] for name in group["params"]]} for group in groups],
    }


def with_strategy(cfg, strategy: str) -> str:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.update(cfg, "trainer.strategy", strategy, force_add=True)
    return OmegaConf.to_yaml(cfg, resolve=True)


def converted_meta(ckpt: dict, source: Path, form: str) -> dict:
    return {**ckpt["meta"], CONVERTED_FROM: {"path": os.path.abspath(source), "form": form}}
