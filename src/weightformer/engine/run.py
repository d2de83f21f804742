"""A run's place on disk and in training: its folder, the checkpoint it resumes from, and what a checkpoint holds.

- `resolve_run_dir` / `open_run`: rank 0 picks the run folder and reads the checkpoint to resume from, and
  broadcasts both, so nodes without a shared file system resume the same state. A resumption never silently
  changes a run: the saved config is compared with the new one, and a difference in anything that defines the run
  stops it, unless named in `resume_override` (then the new value really applies).
- `Position`: where training stands, counted in samples of the epoch and optimiser steps, so that a run resumed
  with another number of processes, batch size or accumulation continues at the same sample of the same epoch.
- `training_state` / `restore_training_state`: what a checkpoint holds and how it is put back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointDir, read_training_checkpoint, rng_state, set_rng_state
from .config import RESUME_OVERRIDE_ALL, EngineConfig, resume_differences
from .distributed import Dist, broadcast_object, gather_objects
from .optim import hyperparameters, restore_hyperparameters

__all__ = ["COUNTERS", "Position", "Run", "resolve_run_dir", "open_run", "on_every_rank", "training_state",
           "restore_training_state"]

COUNTERS = ("skipped_samples", "dropped_samples")


@dataclass
class Position:
    """Where training stands: epoch, samples of that epoch consumed (all ranks), optimiser steps so far."""

    epoch: int = 0
    samples_in_epoch: int = 0
    step: int = 0


@dataclass
class Run:
    """The run folder, and when resuming: the checkpoint, its contents and the config values it changes."""

    run_dir: Path
    checkpoints: CheckpointDir
    resumed_from: Path | None = None
    state: dict[str, Any] | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def resolve_run_dir(cfg: EngineConfig) -> Path:
    """Where the run writes: <output_dir>/<run_name>, or -2, -3, ... when that folder exists.

    A run folder that exists is never written into by a fresh run. With resume="auto" the newest existing run of
    the name that holds a checkpoint is continued; with a checkpoint path, the run that holds it.
    """
    if cfg.resume not in (None, "auto"):
        path = Path(cfg.resume).resolve()
        if path.parent.name == "checkpoints":
            return path.parent.parent
    base, name = Path(cfg.output_dir), cfg.run_name or cfg.recipe

    def candidate(i: int) -> Path:
        return base / (name if i == 1 else f"{name}-{i}")

    i, resumable = 1, None
    while candidate(i).exists():
        if CheckpointDir(candidate(i) / "checkpoints").latest() is not None:
            resumable = candidate(i)
        i += 1
    if cfg.resume == "auto" and resumable is not None:
        return resumable
    return candidate(i)


def _locate(cfg: EngineConfig) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """(run folder, checkpoint to resume from, its contents): rank 0's view of the file system."""
    run_dir = resolve_run_dir(cfg)
    if cfg.resume is None:
        return run_dir, None, None
    source = CheckpointDir(run_dir / "checkpoints").latest() if cfg.resume == "auto" else Path(cfg.resume)
    if source is None:
        return run_dir, None, None  # resume auto, nothing to resume: a fresh run
    return run_dir, source, read_training_checkpoint(source)


def on_every_rank(fn, d: Dist, what: str) -> Any:
    """Run `fn` on every rank; if it fails on any, raise on all (no rank is left waiting in a collective)."""
    if d.world_size == 1:
        return fn()
    try:
        result, error = fn(), None
    except Exception as exc:  # reported to every rank below, then raised everywhere
        result, error = None, f"{type(exc).__name__}: {exc}"
    errors = [(rank, e) for rank, e in enumerate(gather_objects(error, d)) if e]
    if errors:
        raise ValueError(f"{what} failed on " + "; ".join(f"rank {rank}: {e}" for rank, e in errors))
    return result


def _check_resume(state: dict[str, Any], source: Path, cfg: EngineConfig, d: Dist) -> dict[str, tuple]:
    """Raise unless every run-defining change since the checkpoint is named in resume_override."""
    saved_world_size = state.get("world_size", len(state.get("rng", [None])))
    changes = resume_differences(state["config"], cfg, saved_world_size, d.world_size)
    allowed = set(cfg.resume_override)
    refused = {k: v for k, v in changes.items() if RESUME_OVERRIDE_ALL not in allowed and k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ValueError(
            f"Resuming from {source} would change the run: {listed}. Resume with the saved values, or pass "
            f"--resume-override {','.join(refused)} (or all) to continue with the new ones.")
    return changes


def open_run(cfg: EngineConfig, d: Dist) -> Run:
    """Rank 0 picks the run folder and reads the checkpoint to resume from; every rank gets both (and the check)."""
    found = None
    if d.primary:
        try:
            found = ("ok", *_locate(cfg))
        except (ValueError, OSError) as error:
            found = ("error", str(error))
    found = broadcast_object(found, d)
    if found[0] == "error":
        raise ValueError(found[1])
    _, run_dir, source, state = found
    run = Run(run_dir, CheckpointDir(run_dir / "checkpoints", keep=cfg.keep_checkpoints))
    if state is not None:
        run.resumed_from, run.state, run.changes = source, state, _check_resume(state, source, cfg, d)
    return run


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   ema: Any, pos: Position, d: Dist, **values: Any) -> dict[str, Any] | None:
    """The checkpoint of the current position, on rank 0 (None elsewhere). A collective: every rank calls it.

    The schedule is not saved: it is a function of the position (`Engine._set_schedule`), so a resumption with
    another batch size or number of processes points it at the same fraction of training."""
    rngs = gather_objects(rng_state(), d)  # each process continues its own streams on resumption
    if not d.primary:
        return None
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": pos.epoch, "samples_in_epoch": pos.samples_in_epoch, "step": pos.step,
        "world_size": d.world_size, "rng": rngs, **values,
    }


def restore_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, cfg: EngineConfig, d: Dist) -> Position:
    """Load a checkpoint's weights, optimiser and scaler states and RNG streams; return its position."""
    model.load_state_dict(state["model"])
    fresh = hyperparameters(optimizer)
    optimizer.load_state_dict(state["optimizer"])
    restore_hyperparameters(optimizer, fresh)  # the config's lr, betas, decay: overrides really apply
    scaler.load_state_dict(state["scaler"])
    saved_world_size = state.get("world_size", len(state["rng"]))
    samples = state.get("samples_in_epoch", state.get("batch_in_epoch", 0) * state["config"]["batch_size"]
                        * saved_world_size)  # checkpoints of older versions counted batches
    pos = Position(state["epoch"], samples, state["step"])
    if saved_world_size == d.world_size:
        set_rng_state(state["rng"][d.rank])  # each process continues its own streams (drop-path, mixup)
    else:  # a new process layout: fresh streams, still reproducible from the seed and position
        seed = cfg.seed + 1_000_003 * (pos.step + 1) + d.rank
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed % 2**32)
    return pos
