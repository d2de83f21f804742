"""The training engine: one loop for every task, on one process or many (DistributedDataParallel).

`Engine(task).fit()` runs a task (see task.py) from start to finish, or from where it stopped. Launch with
`weightformer CMD train`, or `torchrun --nproc_per_node=N -m weightformer CMD train ...` (torchrun's RANK /
WORLD_SIZE / LOCAL_RANK environment is all it needs). `fit` reads top to bottom: the run folder and the checkpoint
to resume from (run.py), data, model, optimiser and schedule, then `train_one_epoch` and `end_epoch` (evaluation,
checkpoint) for each epoch.

What the engine guarantees, whatever the task:
- Positions are counted in samples: a run resumed with another number of processes, batch size or accumulation
  continues at the same sample of the same epoch (and the schedule at the same fraction of training).
- One optimiser step is `accum_steps` micro-batches of `batch_size` on every process: the same update as one
  batch of accum_steps x batch_size (DDP synchronises the gradients on the last micro-batch only). The schedule,
  the logs and the checkpoints count optimiser steps, and a checkpoint is only ever written between two of them.
- A resumption never silently changes a run (run.py); a start-up error on any rank stops every rank.
- SIGTERM / SIGUSR1 write a checkpoint at the next step boundary and end the run cleanly (`preempted`).
- Unreadable samples and samples a task drops are counted over all ranks, logged and saved; a step that a rank
  has nothing to train on is skipped by every rank but still counts, so a checkpoint that falls due then is written.
- EMA weights are built after DDP has given every rank rank 0's weights: the same EMA model on every rank.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch.nn.parallel import DistributedDataParallel

from .. import kernels
from ..models import compile_blocks, set_grad_checkpointing
from ..models.compilation import block_containers, resolve_compile_scope
from .config import EngineConfig
from .data import Collated, EpochSampler, StreamDataset, make_loader, warn_skipped
from .distributed import Dist, all_reduce_sum, check_in_sync, gather_objects, setup_distributed, teardown_distributed
from .evaluation import autocast, evaluate, to_device
from .loggers import open_trackers, require_trackers
from .logging import MetricsLog, progress_bar
from .optim import build_optimizer, build_scheduler, peak_lr
from .preemption import PreemptionFlag
from .run import (
    COUNTERS,
    Position,
    Run,
    on_every_rank,
    open_run,
    resolve_run_dir,
    restore_training_state,
    training_state,
)
from .task import Datasets, Task

__all__ = ["Engine", "resolve_run_dir", "fit"]


def fit(task: Task) -> dict[str, Any]:
    """Run `task` to the end (or to a preemption); return its final metrics, run folder and model."""
    return Engine(task).fit()


# Measured in benchmarks/GENERATION.md (WeightFormer-DiT-S/2 and DiT-S/2 alike, latent 32, batch 8).
COMPILED_CHECKPOINTING_WARNING = (
    "grad_checkpointing with compile_scope 'model': PyTorch's compiled backward keeps much of what activation "
    "checkpointing frees in eager mode (WeightFormer-DiT-S/2's training step peaks 3.8x lower eager, 1.4x compiled "
    "as one graph). compile_scope 'blocks' (the default with grad_checkpointing where the model has blocks) keeps "
    "the eager saving.")


class Meter:
    """Running sums of the loss (and its named parts) over optimiser steps, for one log line or one epoch."""

    def __init__(self) -> None:
        self.loss, self.steps, self.parts, self.start = 0.0, 0, {}, time.perf_counter()

    def add(self, loss: float, parts: dict[str, float]) -> None:
        self.loss, self.steps = self.loss + loss, self.steps + 1
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + value


def _steps(loader: Iterable[Collated], accum_steps: int) -> Iterator[list[Collated]]:
    """The loader's micro-batches grouped by optimiser step (the sampler holds whole steps only)."""
    group = []
    for collated in loader:
        group.append(collated)
        if len(group) == accum_steps:
            yield group
            group = []


class Engine:
    """Runs a Task: distribution, precision, accumulation, EMA, clipping, checkpoints, resumption, logging,
    progress, signals and evaluation."""

    def __init__(self, task: Task) -> None:
        self.task, self.cfg = task, task.cfg
        cfg: EngineConfig = task.cfg
        # Set up by fit(), in this order.
        self.d: Dist = Dist()
        self.run: Run | None = None  # the run folder, and the checkpoint being resumed
        self.data: Datasets | None = None
        self.global_batch = cfg.batch_size * cfg.accum_steps  # samples per optimiser step, all processes
        self.train_sampler: EpochSampler | None = None
        self.steps_per_epoch = 0  # optimiser steps
        self.val_loader = None
        self.pin = False
        self.model: nn.Module | None = None  # the bare model: what is saved and evaluated
        self.ddp: DistributedDataParallel | None = None  # its DDP wrapper, with several processes
        self.train_model: nn.Module | None = None  # what a step calls: the model, DDP-wrapped and/or compiled
        self.ema: ModelEmaV3 | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler: torch.amp.GradScaler | None = None
        self.lr = 0.0
        self.amp_dtype: torch.dtype | None = None
        # Training state: position, best validation value, counters (saved ones + this session's on this rank).
        self.pos = Position()
        self.best: float | None = None
        self.counts_saved = dict.fromkeys(COUNTERS, 0)
        self.counts_local = dict.fromkeys(COUNTERS, 0)
        self.epoch_meter, self.log_meter = Meter(), Meter()
        self.metrics: dict[str, Any] = {}
        self.log: MetricsLog | None = None
        self.preemption: PreemptionFlag | None = None

    def fit(self) -> dict[str, Any]:
        self.d = setup_distributed(self.cfg.device)
        try:
            with PreemptionFlag() as self.preemption:
                return self._fit()
        finally:
            teardown_distributed(self.d)

    def _fit(self) -> dict[str, Any]:
        d = self.d
        # A tracker's missing package stops the run here, before anything is written (rank 0 alone logs).
        on_every_rank(lambda: require_trackers(self.cfg.logger) if d.primary else None, d, "Loading the loggers")
        self._seed_and_threads()
        self.run = open_run(self.cfg, d)
        self._build_data()
        self._build_training()
        self._write_run_folder()
        self._announce()
        status = "failed"  # how the trackers are told the run ended
        try:
            for epoch in range(self.pos.epoch, self.cfg.epochs):
                if not self.train_one_epoch(epoch):
                    status = "preempted"
                    return self._stopped()  # mid-epoch: its checkpoint is written
                self.end_epoch(epoch)
            best_weights = self.ema.module if self.ema is not None else self.model  # the EMA when there is one
            on_every_rank(lambda: self.task.report(best_weights, self.run.run_dir, self.cfg.epochs, d), d, "report")
            status = "finished"
            return self._result(preempted=False)
        finally:
            self.log.close(status)

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
            if cfg.reuse_cpu_memory:
                kernels.reuse_freed_cpu_memory()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def _build_data(self) -> None:
        cfg, d, task = self.cfg, self.d, self.task
        # Generate or download once per node; the others wait (the error check is a barrier), then read.
        on_every_rank(task.prepare_data if d.local_rank == 0 else (lambda: None), d, "Preparing the data")
        self.data = on_every_rank(lambda: task.build_datasets(d), d, "Building the datasets")
        self.global_batch = cfg.batch_size * cfg.accum_steps * d.world_size
        # The sampler cuts each epoch to whole optimiser steps; the loader hands out micro-batches of batch_size.
        # With groups, each optimiser step's global batch comes from one group. A dataset may fix its own epoch
        # order (a permutation by (seed, epoch)): tar shards read a few at a time.
        self.train_sampler = EpochSampler(len(self.data.train), shuffle=True, seed=cfg.seed, rank=d.rank,
                                          world_size=d.world_size, batch_size=cfg.batch_size * cfg.accum_steps,
                                          groups=self.data.groups, order=getattr(self.data.train, "epoch_order", None))
        self.steps_per_epoch = self.train_sampler.steps()
        if self.steps_per_epoch == 0:
            within = " of any one group" if self.data.groups is not None else ""
            raise ValueError(f"batch_size {cfg.batch_size} x accum_steps {cfg.accum_steps} x {d.world_size} "
                             f"processes is more than the {len(self.data.train)} training samples{within}.")
        self.pin = d.device.type == "cuda" and cfg.pin_memory
        if self.data.val is not None:
            sampler = EpochSampler(len(self.data.val), shuffle=False, rank=d.rank, world_size=d.world_size)
            self.val_loader = make_loader(self.data.val, sampler, cfg.batch_size, cfg.workers,
                                          functools.partial(task.collate, train=False), self.pin)

    def _build_training(self) -> None:
        """Model, optimiser, schedule, scaler; then the checkpoint's state; then DDP, EMA and compilation."""
        cfg, d, state = self.cfg, self.d, self.run.state
        model = on_every_rank(self.task.build_model, d, "Building the model")
        if cfg.grad_checkpointing:
            set_grad_checkpointing(model)
        if d.world_size > 1 and d.device.type == "cuda":  # batch statistics over the global batch (CUDA only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(d.device)
        self.lr = peak_lr(cfg, d.world_size)
        self.optimizer = build_optimizer(self.model, cfg, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.amp_dtype = getattr(torch, cfg.amp_dtype) if cfg.amp else None
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.amp_dtype == torch.float16)
        if state is not None:
            self.pos = restore_training_state(state, self.model, self.optimizer, self.scaler, cfg, d)
            self.best = state.get("best")
            self.counts_saved = {k: state.get("counts", {}).get(k, 0) for k in COUNTERS}
        # DDP broadcasts rank 0's parameters and buffers; the EMA copy is taken after, so it is the same everywhere.
        if d.world_size > 1:
            self.ddp = DistributedDataParallel(self.model, device_ids=[d.device] if d.device.type == "cuda" else None)
        self.train_model = self.ddp or self.model
        self.ema = ModelEmaV3(self.model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        if self.ema is not None and state is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if cfg.compile:
            self._compile()
        self._set_schedule()

    def _compile(self) -> None:
        """torch.compile what a step calls: the whole model as one graph, or each of its blocks on its own
        (`compile_scope`; "auto": blocks with grad_checkpointing, whose saving a whole-model graph mostly loses,
        where the model has blocks)."""
        cfg = self.cfg
        scope = resolve_compile_scope(cfg.compile_scope, cfg.grad_checkpointing, bool(block_containers(self.model)))
        if scope == "blocks":  # in place: the model (and DDP around it) is unchanged, its blocks run compiled
            compile_blocks(self.model, backend=cfg.compile_backend)
            return
        if cfg.grad_checkpointing:
            warnings.warn(COMPILED_CHECKPOINTING_WARNING, stacklevel=3)
        self.train_model = torch.compile(self.train_model, backend=cfg.compile_backend)

    def _write_run_folder(self) -> None:
        """Create the run folder once everything has been built: a run that fails to start leaves nothing."""
        run_dir = self.run.run_dir
        if self.d.primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        trackers = open_trackers(self.cfg.logger, run_dir, self.cfg.to_dict()) if self.d.primary else []
        self.log = MetricsLog(run_dir, self.d.primary, self.cfg.tensorboard, trackers)

    def _announce(self) -> None:
        cfg, run = self.cfg, self.run
        n_params = sum(p.numel() for p in self.model.parameters())
        accum = f" ({cfg.accum_steps} micro-batches of {cfg.batch_size} per process)" if cfg.accum_steps > 1 else ""
        grouped = ""
        if self.data.groups is not None:
            grouped = (f" (each from one of {len(set(self.data.groups))} sample groups; "
                       f"{self.train_sampler.left_over()} samples left over per epoch)")
        self._say(f"Run {run.run_dir}: {n_params / 1e6:.2f} M parameters; {self.data.description}; "
                  f"{self.d.world_size} process(es) on {self.d.device.type}, global batch {self.global_batch}{accum}, "
                  f"peak lr {self.lr:.3g}, {self.steps_per_epoch} steps per epoch{grouped}.")
        if self.pos.epoch >= cfg.epochs:
            self._say(f"Nothing to train: {run.run_dir} has finished its {cfg.epochs} epochs (to train longer, "
                      "resume with a larger --epochs and --resume-override epochs).")
        if run.resumed_from is not None:
            changed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in run.changes.items())
            self._say(f"Resumed from {run.resumed_from}: epoch {self.pos.epoch + 1}, sample "
                      f"{self.pos.samples_in_epoch} of the epoch, step {self.pos.step}"
                      + (f"; with new values {changed}" if changed else "") + ".")
            if isinstance(self.data.train, StreamDataset) and self.pos.samples_in_epoch:
                self._say(f"The training data is a stream: every process reads the epoch's first "
                          f"{self.pos.samples_in_epoch} records again to pass over them (exact when the stream "
                          "gives the same records in the same order as before).")

    def _set_schedule(self) -> None:
        """Point the schedule at the current position, measured in samples (valid across batch/world changes)."""
        done = self.pos.epoch * self.steps_per_epoch + self.pos.samples_in_epoch // self.global_batch
        self.scheduler.step_update(num_updates=done)

    # -- training ---------------------------------------------------------------------------------------------

    def train_one_epoch(self, epoch: int) -> bool:
        """Train one epoch from the current position; False when stopped mid-epoch by a signal."""
        cfg = self.cfg
        self.train_model.train()
        self.train_sampler.set_epoch(epoch, self.pos.samples_in_epoch)
        loader = make_loader(self.data.train, self.train_sampler, cfg.batch_size, cfg.workers,
                             functools.partial(self.task.collate, train=True), self.pin)
        remaining = self.train_sampler.steps(self.pos.samples_in_epoch)
        bar = progress_bar(self.steps_per_epoch, self.steps_per_epoch - remaining, f"epoch {epoch + 1}/{cfg.epochs}",
                           self.d.primary and cfg.progress)
        self.epoch_meter, self.log_meter = Meter(), Meter()
        try:
            for micro_batches in _steps(loader, cfg.accum_steps):
                if not self.train_step(micro_batches):
                    self._save()  # at the boundary before this step: its batches are read again on resumption
                    return False
                if bar is not None:
                    bar.update()
                self._after_step(epoch, bar)
        finally:
            if bar is not None:
                bar.close()
        return True

    def train_step(self, micro_batches: list[Collated]) -> bool:
        """One optimiser step over `micro_batches` (skipped by every rank when one rank has nothing to train on).

        Returns False, without training, when a stop signal has reached any rank since the previous step."""
        batches = [c.batch for c in micro_batches if c.batch is not None]
        empty, stop = self._sync_flags(not batches, self.preemption.requested)
        if stop:
            return False
        for collated in micro_batches:
            self._count(collated)
        if not empty:
            self._optimise(batches)
        self.pos.samples_in_epoch += self.global_batch
        self.pos.step += 1
        self._set_schedule()  # a skipped step uses up its place in the schedule too
        return True

    def _optimise(self, batches: list[Any]) -> None:
        """Accumulate the gradients of the micro-batches (mean of their losses), then clip, step, update the EMA."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, parts_sum = 0.0, {}
        for i, batch in enumerate(batches):
            # Under DDP the gradients are all-reduced in the backward of the last micro-batch only.
            sync = i == len(batches) - 1 or self.ddp is None
            with nullcontext() if sync else self.ddp.no_sync():
                loss, parts = self._loss(to_device(batch, self.d.device))
                self.scaler.scale(loss / len(batches)).backward()
            loss_sum += loss.item()
            for name, part in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(part)
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, step=self.pos.step)
        value = loss_sum / len(batches)
        if not math.isfinite(value):
            raise RuntimeError(f"Loss is {value} at step {self.pos.step}; stopping.")
        parts = {name: v / len(batches) for name, v in parts_sum.items()}
        self.epoch_meter.add(value, parts)
        self.log_meter.add(value, parts)

    def _loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(self.d.device, self.amp_dtype):
            loss = self.task.training_loss(self.train_model, batch)
        return loss if isinstance(loss, tuple) else (loss, {})

    def _after_step(self, epoch: int, bar) -> None:
        """The logging and the mid-epoch checkpoint that fall due after a step."""
        cfg = self.cfg
        if self.pos.step % cfg.log_interval == 0:
            self._log_interval(epoch, bar)
        end_of_epoch = self.train_sampler.steps(self.pos.samples_in_epoch) == 0
        if cfg.checkpoint_interval and self.pos.step % cfg.checkpoint_interval == 0 and not end_of_epoch:
            self._save()

    def _count(self, collated: Collated) -> None:
        if collated.skipped:
            warn_skipped(collated.skipped)
        self.counts_local["skipped_samples"] += len(collated.skipped)
        self.counts_local["dropped_samples"] += collated.dropped

    def _sync_flags(self, empty: bool, stop: bool) -> tuple[bool, bool]:
        """(skip this step, stop before it), agreed by all ranks in one all-reduce: under DDP every rank must take
        the same steps, so one rank's empty step skips it everywhere, one rank's signal stops them all."""
        empty_any, stop_any = all_reduce_sum([float(empty), float(stop)], self.d)
        return empty_any > 0, stop_any > 0

    def _global_counts(self, *local: float) -> tuple[dict[str, int], list[float]]:
        """The run's counters summed over ranks (plus the checkpoint's), and `local` values summed over ranks."""
        sums = all_reduce_sum([self.counts_local[k] for k in COUNTERS] + list(local), self.d)
        counts = {k: self.counts_saved[k] + int(v) for k, v in zip(COUNTERS, sums, strict=False)}
        return counts, sums[len(COUNTERS):]

    def _log_interval(self, epoch: int, bar) -> None:
        meter = self.log_meter
        # The loss's parts, when the task returns them; named by every rank (one may have skipped all its steps).
        names = sorted(set().union(*gather_objects(sorted(meter.parts), self.d)))
        counts, (loss_sum, steps, *part_sums) = self._global_counts(
            meter.loss, meter.steps, *(meter.parts.get(n, 0.0) for n in names))
        rate = meter.steps * self.global_batch / max(time.perf_counter() - meter.start, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        if steps:
            parts = {f"loss_{n}": v / steps for n, v in zip(names, part_sums, strict=True)}
            epoch_fraction = epoch + self.pos.samples_in_epoch / (self.steps_per_epoch * self.global_batch)
            self.log.write("train", self.pos.step, epoch=epoch_fraction, loss=loss_sum / steps, **parts, lr=lr,
                           images_per_second=rate, **counts)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / steps:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
        self.log_meter = Meter()

    def _stopped(self) -> dict[str, Any]:
        self._say(f"Stopped by {self.preemption.signal_name or 'a signal to another rank'}: checkpoint "
                  f"{self.run.checkpoints.last} written at step {self.pos.step}; continue with --resume auto.")
        return self._result(preempted=True)

    # -- end of epoch: evaluation, checkpoint -----------------------------------------------------------------

    def end_epoch(self, epoch: int) -> None:
        check_in_sync(self.model, self.d)
        if self.ema is not None:
            check_in_sync(self.ema.module, self.d, "EMA weights")
        counts, (loss_sum, steps) = self._global_counts(self.epoch_meter.loss, self.epoch_meter.steps)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1),
                                   "epoch_seconds": time.perf_counter() - self.epoch_meter.start,
                                   "lr": self.optimizer.param_groups[0]["lr"], **counts}
        is_best = False
        if self.val_loader is not None and ((epoch + 1) % self.cfg.eval_interval == 0 or epoch + 1 == self.cfg.epochs):
            metrics.update(self.evaluate())
            is_best = self._is_best(metrics)
        metrics["best_" + self.task.best_metric] = self.best
        self.metrics = metrics
        self.log.write("epoch", self.pos.step, **metrics)
        self._say(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        self.pos = Position(epoch + 1, 0, self.pos.step)
        self._save(is_best)

    def evaluate(self) -> dict[str, Any]:
        """The task's validation metrics of the model (`val_*`) and of its EMA weights (`val_ema_*`)."""
        d, task = self.d, self.task
        metrics = {f"val_{k}": v for k, v in evaluate(task, self.model, self.val_loader, d, self.amp_dtype).items()}
        if self.ema is not None:
            ema = evaluate(task, self.ema.module, self.val_loader, d, self.amp_dtype)
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
        counts, _ = self._global_counts()
        state = training_state(self.model, self.optimizer, self.scaler, self.ema, self.pos, self.d,
                               global_batch=self.global_batch, best=self.best, counts=counts,
                               config=self.cfg.to_dict(), task=self.task.name, **self.task.checkpoint_extras())
        if state is not None:
            self.run.checkpoints.save(state, self.pos.step, is_best=is_best)

    def _say(self, line: str) -> None:
        if self.d.primary:
            print(line, flush=True)

    def _result(self, preempted: bool) -> dict[str, Any]:
        counts, _ = self._global_counts()
        if counts["skipped_samples"]:
            self._say(f"{counts['skipped_samples']} unreadable samples were skipped (listed above).")
        return {**self.metrics, **counts, "run_dir": self.run.run_dir, "model": self.model,
                "ema_model": self.ema.module if self.ema is not None else None, "preempted": preempted,
                "step": self.pos.step, **self.task.checkpoint_extras()}

