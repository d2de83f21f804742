"""Optimiser and learning-rate schedule from a config (timm's factories)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .config import EngineConfig

__all__ = ["peak_lr", "build_optimizer", "build_scheduler", "hyperparameters", "restore_hyperparameters"]

# Per-group values that come from the config, not from a checkpoint: a resumed run whose override changed
# them must run with the new ones (torch's Optimizer.load_state_dict would restore the saved ones).
HYPERPARAMETERS = ("lr", "initial_lr", "weight_decay", "betas", "eps", "momentum")


def peak_lr(cfg: EngineConfig, world_size: int) -> float:
    """cfg.lr if set, else base_lr scaled linearly by the global batch (5e-4 per 512 images in the release); the
    global batch counts every accumulated micro-batch of an optimiser step."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.base_lr * cfg.batch_size * cfg.accum_steps * world_size / cfg.base_batch_size


def build_optimizer(model: nn.Module, cfg: EngineConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory: weight decay on matrices and kernels, none on 1-D parameters (norms, biases);
    with `layer_decay`, each layer group of `model.group_matcher` gets lr x layer_decay^(depth - layer)."""
    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps,
                               betas=tuple(cfg.betas), filter_bias_and_bn=True, layer_decay=cfg.layer_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: EngineConfig, steps_per_epoch: int):
    """Per-step schedule after a linear warm-up from warmup_lr: cosine to min_lr, constant, or multistep (x
    decay_rate at each of decay_milestones, in epochs: detection's 1x / 3x schedules) (timm, t in steps)."""
    if cfg.sched == "multistep":  # (the config checked sched and the milestones)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched="multistep", num_epochs=cfg.epochs, decay_milestones=list(cfg.decay_milestones),
            decay_rate=cfg.decay_rate, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch,
        )
        return scheduler
    # A constant schedule is a cosine whose floor is its peak.
    floor = cfg.min_lr if cfg.sched == "cosine" else optimizer.param_groups[0]["lr"]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
        min_lr=floor, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    return scheduler


def restore_hyperparameters(optimizer: torch.optim.Optimizer, fresh: list[dict]) -> None:
    """Put back the config's per-group values after Optimizer.load_state_dict (see HYPERPARAMETERS)."""
    for group, values in zip(optimizer.param_groups, fresh, strict=True):
        group.update(values)


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{k: g[k] for k in HYPERPARAMETERS if k in g} for g in optimizer.param_groups]
