"""The training engine: one loop for every task, on one process or many (DistributedDataParallel).

`Engine(task).fit()` runs a task (see task.py) from start to finish, or from where it stopped. Read top to
bottom: the run folder and the checkpoint to resume from (decided by rank 0, broadcast to all), data, model,
optimiser and schedule, the epoch loop, evaluation, checkpoints. Launch with `weightformer train`, or
`torchrun --nproc_per_node=N -m weightformer train ...` (torchrun's RANK / WORLD_SIZE / LOCAL_RANK
environment is all it needs).

What the engine guarantees, whatever the task:
- Positions are counted in samples: a run resumed with another number of processes or another batch size
  continues at the same sample of the same epoch (and the schedule at the same fraction of training).
- A resumption never silently changes a run: the saved config is compared with the new one, and a difference in
  anything that defines the run stops it, unless named in `resume_override` (then the new value really applies).
- Rank 0 alone reads the file system for the run folder and the checkpoint and broadcasts what it found, so
  nodes without a shared file system resume the same state; a start-up error on any rank stops every rank.
- SIGTERM / SIGUSR1 write a checkpoint at the next step boundary and end the run cleanly (`preempted`).
- Unreadable samples and samples a task drops are counted over all ranks, logged and saved; a step that every
  rank skips still counts, so a checkpoint that falls due then is written.
- EMA weights are built after DDP has given every rank rank 0's weights: the same EMA model on every rank.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch.nn.parallel import DistributedDataParallel

from ..models import set_grad_checkpointing
from .checkpoint import CheckpointDir, read_training_checkpoint, rng_state, set_rng_state
from .config import RESUME_OVERRIDE_ALL, EngineConfig, resume_differences
from .data import Collated, EpochSampler, make_loader, warn_skipped
from .distributed import (
    Dist,
    all_reduce_sum,
    broadcast_object,
    check_in_sync,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from .logging import MetricsLog, progress_bar
from .optim import build_optimizer, build_scheduler, hyperparameters, peak_lr, restore_hyperparameters
from .preemption import PreemptionFlag
from .task import Task

__all__ = ["Engine", "resolve_run_dir", "fit"]

COUNTERS = ("skipped_samples", "dropped_samples")


def fit(task: Task) -> dict[str, Any]:
    """Run `task` to the end (or to a preemption); return its final metrics, run folder and model."""
    return Engine(task).fit()


#################################################################################
#                         Run folder and resume point                           #
#################################################################################


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


def _on_every_rank(fn, d: Dist, what: str) -> Any:
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


#################################################################################
#                                    Engine                                     #
#################################################################################


@dataclass
class Position:
    """Where training stands: epoch, samples of that epoch consumed (all ranks), optimiser steps so far."""

    epoch: int = 0
    samples_in_epoch: int = 0
    step: int = 0


class Engine:
    """Runs a Task: distribution, precision, EMA, clipping, checkpoints, resumption, logging, progress, signals."""

    def __init__(self, task: Task) -> None:
        self.task, self.cfg = task, task.cfg

    def fit(self) -> dict[str, Any]:
        d = setup_distributed(self.cfg.device)
        try:
            with PreemptionFlag() as self.preemption:
                return self._fit(d)
        finally:
            teardown_distributed(d)

    def _fit(self, d: Dist) -> dict[str, Any]:
        self.d = d
        self._seed_and_threads()
        state = self._open_run()
        self._build_data()
        self._build_training(state)
        self._write_run_folder()
        self._announce()
        try:
            for epoch in range(self.pos.epoch, self.cfg.epochs):
                if not self._train_epoch(epoch):
                    return self._stopped()  # mid-epoch: its checkpoint is written
                self._end_epoch(epoch)
            best_weights = self.ema.module if self.ema is not None else self.model  # the EMA when there is one
            _on_every_rank(lambda: self.task.report(best_weights, self.run_dir, self.cfg.epochs, d), d, "report")
            return self._result(preempted=False)
        finally:
            self.log.close()

    # -- set-up -----------------------------------------------------------------------------------------------

    def _seed_and_threads(self) -> None:
        cfg, d = self.cfg, self.d
        torch.manual_seed(cfg.seed + d.rank)  # model init comes from rank 0 through DDP; drop-path differs per rank
        random.seed(cfg.seed + d.rank)
        np.random.seed(cfg.seed + d.rank)
        if d.device.type == "cpu":
            # Data workers and compute threads share the cores. Oversubscribed, OpenMP's spinning threads slow
            # every small kernel down many times over, so by default the workers get their cores first.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(cfg.threads or max(1, cores // d.world_size - cfg.workers))
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def _open_run(self) -> dict[str, Any] | None:
        """Rank 0 picks the run folder and reads the checkpoint to resume from; every rank gets both."""
        cfg, d = self.cfg, self.d
        found = None
        if d.primary:
            try:
                found = ("ok", *_locate(cfg))
            except (ValueError, OSError) as error:
                found = ("error", str(error))
        found = broadcast_object(found, d)
        if found[0] == "error":
            raise ValueError(found[1])
        _, self.run_dir, source, state = found
        self.changes = _check_resume(state, source, cfg, d) if state is not None else {}
        self.resumed_from = source if state is not None else None
        self.checkpoints = CheckpointDir(self.run_dir / "checkpoints", keep=cfg.keep_checkpoints)
        return state

    def _write_run_folder(self) -> None:
        """Create the run folder once everything has been built: a run that fails to start leaves nothing."""
        if self.d.primary:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self.log = MetricsLog(self.run_dir, self.d.primary, self.cfg.tensorboard)

    def _build_data(self) -> None:
        cfg, d, task = self.cfg, self.d, self.task
        # Generate or download once per node; the others wait (the error check is a barrier), then read.
        _on_every_rank(task.prepare_data if d.local_rank == 0 else (lambda: None), d, "Preparing the data")
        self.data = _on_every_rank(lambda: task.build_datasets(d), d, "Building the datasets")
        self.global_batch = cfg.batch_size * d.world_size
        self.train_sampler = EpochSampler(len(self.data.train), shuffle=True, seed=cfg.seed, rank=d.rank,
                                          world_size=d.world_size, batch_size=cfg.batch_size)
        self.steps_per_epoch = self.train_sampler.steps()
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {cfg.batch_size} x {d.world_size} processes is more than the "
                             f"{len(self.data.train)} training samples.")
        self.pin = d.device.type == "cuda" and cfg.pin_memory
        self.val_loader = None
        if self.data.val is not None:
            sampler = EpochSampler(len(self.data.val), shuffle=False, rank=d.rank, world_size=d.world_size)
            self.val_loader = make_loader(self.data.val, sampler, cfg.batch_size, cfg.workers,
                                          functools.partial(task.collate, train=False), self.pin)

    def _build_training(self, state: dict[str, Any] | None) -> None:
        """Model, optimiser, schedule, scaler; then the checkpoint's state; then DDP, EMA and compilation."""
        cfg, d = self.cfg, self.d
        model = _on_every_rank(self.task.build_model, d, "Building the model")
        if cfg.grad_checkpointing:
            set_grad_checkpointing(model)
        if d.world_size > 1 and d.device.type == "cuda":  # batch statistics over the global batch (CUDA only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(d.device)
        self.lr = peak_lr(cfg, d.world_size)
        self.optimizer = build_optimizer(self.model, cfg, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        if cfg.amp and cfg.amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be float16 or bfloat16, not {cfg.amp_dtype!r}.")
        self.amp_dtype = getattr(torch, cfg.amp_dtype) if cfg.amp else None
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.amp_dtype == torch.float16)
        self.pos, self.best, self.counts_saved = Position(), None, dict.fromkeys(COUNTERS, 0)
        if state is not None:
            self._load_state(state)
        # DDP broadcasts rank 0's parameters and buffers; the EMA copy is taken after, so it is the same everywhere.
        self.train_model = DistributedDataParallel(
            self.model, device_ids=[d.device] if d.device.type == "cuda" else None) if d.world_size > 1 else self.model
        self.ema = ModelEmaV3(self.model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        if self.ema is not None and state is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if cfg.compile:
            self.train_model = torch.compile(self.train_model, backend=cfg.compile_backend)
        self.counts_local = dict.fromkeys(COUNTERS, 0)
        self._set_schedule()

    def _load_state(self, state: dict[str, Any]) -> None:
        cfg, d = self.cfg, self.d
        self.model.load_state_dict(state["model"])
        fresh = hyperparameters(self.optimizer)
        self.optimizer.load_state_dict(state["optimizer"])
        restore_hyperparameters(self.optimizer, fresh)  # the config's lr, betas, decay: overrides really apply
        self.scaler.load_state_dict(state["scaler"])
        saved_world_size = state.get("world_size", len(state["rng"]))
        samples = state.get("samples_in_epoch", state.get("batch_in_epoch", 0) * state["config"]["batch_size"]
                            * saved_world_size)
        self.pos = Position(state["epoch"], samples, state["step"])
        self.best = state.get("best")
        self.counts_saved = {k: state.get("counts", {}).get(k, 0) for k in COUNTERS}
        if saved_world_size == d.world_size:
            set_rng_state(state["rng"][d.rank])  # each process continues its own streams (drop-path, mixup)
        else:  # a new process layout: fresh streams, still reproducible from the seed and position
            seed = cfg.seed + 1_000_003 * (self.pos.step + 1) + d.rank
            torch.manual_seed(seed), random.seed(seed), np.random.seed(seed % 2**32)

    def _set_schedule(self) -> None:
        """Point the schedule at the current position, measured in samples (valid across batch/world changes)."""
        done = self.pos.epoch * self.steps_per_epoch + self.pos.samples_in_epoch // self.global_batch
        self.scheduler.step_update(num_updates=done)

    def _announce(self) -> None:
        if not self.d.primary:
            return
        n_params = sum(p.numel() for p in self.model.parameters())
        print(f"Run {self.run_dir}: {n_params / 1e6:.2f} M parameters; {self.data.description}; "
              f"{self.d.world_size} process(es) on {self.d.device.type}, global batch {self.global_batch}, "
              f"peak lr {self.lr:.3g}, {self.steps_per_epoch} steps per epoch.", flush=True)
        if self.pos.epoch >= self.cfg.epochs:
            print(f"Nothing to train: {self.run_dir} has finished its {self.cfg.epochs} epochs (to train longer, "
                  "resume with a larger --epochs and --resume-override epochs).", flush=True)
        if self.resumed_from is not None:
            changed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in self.changes.items())
            print(f"Resumed from {self.resumed_from}: epoch {self.pos.epoch + 1}, sample {self.pos.samples_in_epoch}"
                  f" of the epoch, step {self.pos.step}" + (f"; with new values {changed}" if changed else "") + ".",
                  flush=True)

    # -- training ---------------------------------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> bool:
        """Train one epoch from the current position; False when stopped mid-epoch by a signal."""
        cfg, d = self.cfg, self.d
        self.train_model.train()
        start = self.pos.samples_in_epoch
        self.train_sampler.set_epoch(epoch, start)
        loader = make_loader(self.data.train, self.train_sampler, cfg.batch_size, cfg.workers,
                             functools.partial(self.task.collate, train=True), self.pin)
        bar = progress_bar(self.steps_per_epoch, self.steps_per_epoch - self.train_sampler.steps(start),
                           f"epoch {epoch + 1}/{cfg.epochs}", d.primary and cfg.progress)
        self.epoch_loss, self.interval_loss, self.tick = [0.0, 0], [0.0, 0], time.perf_counter()
        self.interval_parts: dict[str, float] = {}
        self.epoch_start = time.perf_counter()
        try:
            for collated in loader:
                if not self._train_step(epoch, collated, bar):
                    self._save()  # at the boundary before this step: its batch is read again on resumption
                    return False
        finally:
            if bar is not None:
                bar.close()
        return True

    def _train_step(self, epoch: int, collated: Collated, bar) -> bool:
        """One step (or one that every rank skips), then the logging and checkpoint that fall due.

        Returns False, without training, when a stop signal has reached any rank since the previous step.
        """
        empty, stop = self._sync_flags(collated.batch is None, self.preemption.requested)
        if stop:
            return False
        self._count(collated)
        if not empty:
            self._optimise(collated.batch)
        self.pos.samples_in_epoch += self.global_batch
        self.pos.step += 1
        self._set_schedule()  # a skipped step uses up its place in the schedule too
        if bar is not None:
            bar.update()
        if self.pos.step % self.cfg.log_interval == 0:
            self._log_interval(epoch, bar)
        end_of_epoch = self.train_sampler.steps(self.pos.samples_in_epoch) == 0
        if self.cfg.checkpoint_interval and self.pos.step % self.cfg.checkpoint_interval == 0 and not end_of_epoch:
            self._save()
        return True

    def _stopped(self) -> dict[str, Any]:
        self._say(f"Stopped by {self.preemption.signal_name or 'a signal to another rank'}: checkpoint "
                  f"{self.checkpoints.last} written at step {self.pos.step}; continue with --resume auto.")
        return self._result(preempted=True)

    def _optimise(self, batch: Any) -> None:
        cfg, d = self.cfg, self.d
        batch = _to_device(batch, d.device)
        with torch.autocast(d.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            loss = self.task.training_loss(self.train_model, batch)
        loss, parts = loss if isinstance(loss, tuple) else (loss, {})
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, step=self.pos.step)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"Loss is {value} at step {self.pos.step}; stopping.")
        for meter in (self.epoch_loss, self.interval_loss):
            meter[0], meter[1] = meter[0] + value, meter[1] + 1
        for name, part in parts.items():
            self.interval_parts[name] = self.interval_parts.get(name, 0.0) + float(part)

    def _count(self, collated: Collated) -> None:
        if collated.skipped:
            warn_skipped(collated.skipped)
        self.counts_local["skipped_samples"] += len(collated.skipped)
        self.counts_local["dropped_samples"] += collated.dropped

    def _sync_flags(self, empty: bool, stop: bool) -> tuple[bool, bool]:
        """(skip this step, stop after it), agreed by all ranks in one all-reduce: under DDP every rank must take
        the same steps, so one rank's empty batch skips the step everywhere, one rank's signal stops them all."""
        empty_any, stop_any = all_reduce_sum([float(empty), float(stop)], self.d)
        return empty_any > 0, stop_any > 0

    def _global_counts(self, *local: float) -> tuple[dict[str, int], list[float]]:
        """The run's counters summed over ranks (plus the checkpoint's), and `local` values summed over ranks."""
        sums = all_reduce_sum([self.counts_local[k] for k in COUNTERS] + list(local), self.d)
        counts = {k: self.counts_saved[k] + int(v) for k, v in zip(COUNTERS, sums, strict=False)}
        return counts, sums[len(COUNTERS):]

    def _log_interval(self, epoch: int, bar) -> None:
        # The loss's parts, when the task returns them; named by every rank (one may have skipped all its steps).
        names = sorted(set().union(*gather_objects(sorted(self.interval_parts), self.d)))
        counts, (loss_sum, loss_count, *part_sums) = self._global_counts(
            *self.interval_loss, *(self.interval_parts.get(n, 0.0) for n in names))
        rate = self.interval_loss[1] * self.global_batch / max(time.perf_counter() - self.tick, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        if loss_count:
            parts = {f"loss_{n}": v / loss_count for n, v in zip(names, part_sums, strict=True)}
            self.log.write("train", self.pos.step, epoch=epoch + self.pos.samples_in_epoch / self._epoch_samples(),
                           loss=loss_sum / loss_count, **parts, lr=lr, images_per_second=rate, **counts)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}",
                                refresh=False)
        self.interval_loss, self.interval_parts, self.tick = [0.0, 0], {}, time.perf_counter()

    def _epoch_samples(self) -> int:
        return self.steps_per_epoch * self.global_batch

    # -- end of epoch: evaluation, checkpoint -----------------------------------------------------------------

    def _end_epoch(self, epoch: int) -> None:
        check_in_sync(self.model, self.d)
        if self.ema is not None:
            check_in_sync(self.ema.module, self.d, "EMA weights")
        counts, (loss_sum, loss_count) = self._global_counts(*self.epoch_loss)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_count, 1),
                                   "epoch_seconds": time.perf_counter() - self.epoch_start,
                                   "lr": self.optimizer.param_groups[0]["lr"], **counts}
        is_best = False
        if self.val_loader is not None and ((epoch + 1) % self.cfg.eval_interval == 0 or epoch + 1 == self.cfg.epochs):
            metrics.update(self._evaluate())
            is_best = self._is_best(metrics)
        metrics["best_" + self.task.best_metric] = self.best
        self.metrics = metrics
        self.log.write("epoch", self.pos.step, **metrics)
        self._say(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        self.pos = Position(epoch + 1, 0, self.pos.step)
        self._save(is_best)

    def _evaluate(self) -> dict[str, Any]:
        d, task = self.d, self.task
        metrics = {f"val_{k}": v for k, v in task.evaluate(self.model, self.val_loader, d, self.amp_dtype).items()}
        if self.ema is not None:
            ema = task.evaluate(self.ema.module, self.val_loader, d, self.amp_dtype)
            metrics.update({f"val_ema_{k}": v for k, v in ema.items() if k != "skipped_samples"})
        return metrics

    def _is_best(self, metrics: dict[str, Any]) -> bool:
        value = metrics[f"val_{self.task.best_metric}"]
        better = self.best is None or (value > self.best if self.task.best_is_higher else value < self.best)
        if better:
            self.best = value
        return better

    def _save(self, is_best: bool = False) -> None:
        """Write a checkpoint of the current position (a collective: every rank calls it at the same step)."""
        rngs = gather_objects(rng_state(), self.d)  # each process continues its own streams on resumption
        counts, _ = self._global_counts()
        if not self.d.primary:
            return
        self.checkpoints.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.pos.epoch, "samples_in_epoch": self.pos.samples_in_epoch, "step": self.pos.step,
            "world_size": self.d.world_size, "global_batch": self.global_batch, "best": self.best,
            "counts": counts, "rng": rngs, "config": self.cfg.to_dict(), "task": self.task.name,
            **self.task.checkpoint_extras(),
        }, self.pos.step, is_best=is_best)

    def _say(self, line: str) -> None:
        if self.d.primary:
            print(line, flush=True)

    def _result(self, preempted: bool) -> dict[str, Any]:
        counts, _ = self._global_counts()
        if self.d.primary and counts["skipped_samples"]:
            print(f"{counts['skipped_samples']} unreadable samples were skipped (listed above).", flush=True)
        return {**getattr(self, "metrics", {}), **counts, "run_dir": self.run_dir, "model": self.model,
                "ema_model": self.ema.module if self.ema is not None else None, "preempted": preempted,
                "step": self.pos.step, **self.task.checkpoint_extras()}


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch

