"""One loader for the checkpoints of every task: `load_run_model(path)` -> the model, its config and extras.

A training checkpoint saves its task's name under "task" (checkpoints written before tasks were named are
classification ones). That name finds the task in the registry, whose config class rebuilds the run's config
and which builds the model the way the task does. Then the EMA weights are loaded when the run kept them (what
it reported as `val_ema_*`), else the trained weights; `ema=False` asks for the trained ones. timm's ModelEmaV3
holds its copy as a submodule named `module`, so its state dict's keys are "module.<parameter name>".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..engine.checkpoint import is_training_checkpoint
from ..engine.config import EngineConfig
from ..engine.distributed import resolve_device
from ..models.checkpoint import load_checkpoint, read_state_dict
from .registry import TaskSpec, get_task

__all__ = ["RunModel", "load_run_model", "build_run_model"]

# What a checkpoint holds besides its extras: the weights, the run's machinery, its config and task.
_NOT_EXTRAS = frozenset({"model", "ema", "optimizer", "scaler", "rng", "config", "task"})


@dataclass
class RunModel:
    """A trained model with what its checkpoint says about it."""

    model: nn.Module  # in eval mode, on the device asked for
    config: EngineConfig  # the run's config (its task's config class)
    task: TaskSpec
    extras: dict[str, Any]  # plain values saved beside the weights: class_names, category_ids, epoch, step, ...
    ema: bool  # whether these are the EMA weights


def load_run_model(checkpoint: str | Path, task: str | TaskSpec | None = None, ema: bool = True,
                   device: str | torch.device = "cpu", state: dict[str, Any] | None = None) -> RunModel:
    """The model a training checkpoint of any task holds, its EMA weights by default, in eval mode on `device`.

    task: the task the caller expects (e.g. "detection"); any other checkpoint is refused in one line naming
        what it is. None: whatever task the checkpoint says.
    state: the file's contents, when the caller has read them already.
    """
    expected = None if task is None else get_task(task)
    wanted = "" if expected is None else (f", not a {expected.kind} one: pass a checkpoint written by "
                                          f"`weightformer {expected.command} train`")
    state = read_state_dict(checkpoint) if state is None else state
    if not is_training_checkpoint(state):
        raise ValueError(f"{checkpoint} is not a training checkpoint of this package{wanted}.")
    try:
        spec = get_task(state.get("task", "classification"))
    except ValueError as error:
        raise ValueError(f"{checkpoint}: {error}") from None
    if expected is not None and spec != expected:
        raise ValueError(f"{checkpoint} is a {spec.name} checkpoint{wanted}.")
    extras = {k: v for k, v in state.items() if k not in _NOT_EXTRAS}
    cfg, model = build_run_model(spec, state["config"], extras)
    use_ema = ema and state.get("ema") is not None
    weights = {k.removeprefix("module."): v for k, v in state["ema"].items()} if use_ema else state["model"]
    load_checkpoint(model, weights, origin=checkpoint, translate=False)
    return RunModel(model.to(resolve_device(device)).eval(), cfg, spec, extras, use_ema)


def build_run_model(spec: TaskSpec, config: dict[str, Any], extras: dict[str, Any]) -> tuple[EngineConfig, nn.Module]:
    """The run's config and its model with fresh weights (on the CPU), from a saved config and extras: what a
    checkpoint and an exported folder (publish.py) both hold. The config is type-checked by the task's class."""
    cfg = spec.config_class.from_dict(_without_starting_weights(config))
    return cfg, spec.build_checkpoint_model(cfg, extras)


def _without_starting_weights(config: dict[str, Any]) -> dict[str, Any]:
    """The saved config, minus the weights the run started from: the checkpoint's replace them, and that file
    need not exist where the checkpoint is read."""
    return {**config, "initial_checkpoint": None} if "initial_checkpoint" in config else config
