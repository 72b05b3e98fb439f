"""The model's and the optimizer's state of a sharded run (trainer.strategy=fsdp), and any
model's state read from a sharded checkpoint: through torch.distributed.checkpoint.state_dict,
which keys the optimizer's state by parameter name and hands each rank its shards. Imported
only where a sharded model or checkpoint is met (framework/engine/state.py): it takes a second."""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from framework.checkpoint import dcp_io
from framework.checkpoint.sharded import Shards

WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered whole, on rank 0


def model_state(model: torch.nn.Module) -> dict:
    return get_model_state_dict(model)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return get_optimizer_state_dict(model, optimizer)


def whole_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Both gathered whole on rank 0 (every rank must call it; the others get empty dicts)."""
    return get_model_state_dict(model, options=WHOLE), get_optimizer_state_dict(model, optimizer, options=WHOLE)


def load_model(model: torch.nn.Module, saved: Shards | dict, problems_of) -> list[str]:
    """Load the weights of a checkpoint directory (`saved`: its Shards) or of one file (whole
    tensors) into this model, sharded or not. `problems_of(own_shapes, saved_shapes)` lists what
    does not fit (and raises when loading is strict). Returns the problems."""
    own = get_model_state_dict(model)
    own_shapes = {k: tuple(v.shape) for k, v in own.items()}
    if isinstance(saved, Shards):
        problems = problems_of(own_shapes, saved.shapes())
        state = {saved.key: {k: v for k, v in own.items() if saved.shapes().get(k) == own_shapes[k]}}
        dcp_io.load_into(state, saved.folder, saved.metadata)
        set_model_state_dict(model, state[saved.key], options=StateDictOptions(strict=not problems))
        return problems
    problems = problems_of(own_shapes, {k: tuple(v.shape) for k, v in saved.items()})
    fits = {k: v for k, v in saved.items() if own_shapes.get(k) == tuple(v.shape)}
    set_model_state_dict(model, fits, options=StateDictOptions(full_state_dict=True, strict=not problems))
    return problems


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: Shards | dict) -> None:
    """The optimizer's state from a checkpoint directory, or from one file's torch state dict
    (keyed by parameter number), into this optimizer's (sharded or not)."""
    if isinstance(saved, Shards):
        state = {saved.key: get_optimizer_state_dict(model, optimizer)}
        dcp_io.load_into(state, saved.folder, saved.metadata)
        set_optimizer_state_dict(model, optimizer, state[saved.key])
        return
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, by_parameter_name(saved, model), options=options)


def by_parameter_name(saved: dict, model: torch.nn.Module) -> dict:
    """A torch optimizer state dict (keyed by parameter number, in the order the optimizer was
    given model.parameters()) keyed by parameter name, as torch.distributed.checkpoint keys it."""
    return keyed_by_name(saved, [name for name, _ in model.named_parameters()])


def keyed_by_name(optimizer_state: dict, names: list[str]) -> dict:
    """A torch optimizer state dict (keyed by parameter number) keyed by parameter name, as a
    directory keys it: number i is names[i]. A number with no name stays a number."""

    def name(i):
        return names[i] if isinstance(i, int) and 0 <= i < len(names) else i

    groups = optimizer_state.get("param_groups", [])
    return {
        **optimizer_state,
        "state": {name(i): value for i, value in optimizer_state.get("state", {}).items()},
        "param_groups": [{**group, "params": [name(i) for i in group.get("params", [])]} for group in groups],
    }
