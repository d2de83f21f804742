"""The training loop: one process or many (DistributedDataParallel), resumable to the exact step.

Read top to bottom: distributed set-up, the run folder, data, model, optimiser and schedule (timm's
factories), then the epoch loop with evaluation, metrics and checkpoints. Launch with `weightformer train`,
`python -m weightformer.train`, or `torchrun --nproc_per_node=N -m weightformer.train` for data parallelism
(torchrun's RANK / WORLD_SIZE / LOCAL_RANK environment is all it needs).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch.nn.parallel import DistributedDataParallel

from ..models import create_model, load_checkpoint
from .checkpoint import CheckpointDir, rng_state, set_rng_state
from .config import TrainConfig
from .data import (
    EpochSampler,
    FolderDataset,
    check_splits,
    eval_transform,
    make_loader,
    train_transform,
    warn_skipped,
)
from .evaluate import evaluate
from .synthetic import make_synthetic_dataset

__all__ = ["train", "build_optimizer", "build_scheduler", "peak_lr"]


#################################################################################
#                          Processes, devices, run folder                       #
#################################################################################


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def primary(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    initialised = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialised = True
    return Dist(rank, local_rank, world_size, dev, initialised)


def _broadcast(value: Any, d: Dist) -> Any:
    if d.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _nothing_to_learn(batch_empty: bool, d: Dist) -> bool:
    """Whether to skip this step. Under DDP every rank must take the same steps (each backward all-reduces the
    gradients), so the step is skipped everywhere as soon as one rank's batch came out empty."""
    if d.world_size == 1:
        return batch_empty
    flag = torch.tensor([float(batch_empty)], device=d.device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def resolve_run_dir(cfg: TrainConfig) -> Path:
    """<output_dir>/<run_name>: with resume="auto" the newest such run with a checkpoint, else a fresh one.

    A fresh run never overwrites an old one: when <run_name> already holds checkpoints, <run_name>-2, -3, ...
    is used instead.
    """
    if cfg.resume not in (None, "auto"):
        return Path(cfg.resume).resolve().parent.parent  # <run>/checkpoints/<file>
    base, name = Path(cfg.output_dir), cfg.run_name or cfg.recipe

    def candidate(i: int) -> Path:
        return base / (name if i == 1 else f"{name}-{i}")

    def has_checkpoint(path: Path) -> bool:
        return CheckpointDir(path / "checkpoints").latest() is not None

    i = 1
    while has_checkpoint(candidate(i)):
        i += 1
    if cfg.resume == "auto" and i > 1:
        return candidate(i - 1)  # the newest run of this name
    return candidate(i)


#################################################################################
#                           Optimiser and learning rate                         #
#################################################################################


def peak_lr(cfg: TrainConfig, world_size: int) -> float:
    """cfg.lr if set, else base_lr scaled linearly by the global batch (5e-4 per 512 images in the release)."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.base_lr * cfg.batch_size * world_size / cfg.base_batch_size


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory: weight decay on matrices and kernels, none on 1-D parameters (norms, biases)."""
    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps,
                               betas=tuple(cfg.betas), filter_bias_and_bn=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step cosine from the peak lr to min_lr, after a linear warm-up from warmup_lr (timm, t in steps)."""
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    return scheduler


#################################################################################
#                                   Logging                                     #
#################################################################################


class MetricsLog:
    """Appends metrics as JSON lines to <run>/metrics.jsonl, and to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)


#################################################################################
#                                  Training                                     #
#################################################################################


def _check_in_sync(model: nn.Module, d: Dist) -> None:
    """Raise if the processes' weights have drifted apart (they must be bit-identical under DDP)."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(d.device)  # (P,)
    gathered = [torch.empty_like(sums) for _ in range(d.world_size)]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("Data-parallel processes hold different weights: they are out of sync.")


def _datasets(cfg: TrainConfig, d: Dist) -> tuple[FolderDataset, FolderDataset, list[str], Path]:
    if cfg.data_dir is None:
        raise ValueError(f"No dataset: set data_dir (--data-dir /path/to/imagenet, holding {cfg.train_split}/ and "
                         f"{cfg.val_split}/), or --data-dir synthetic for the built-in one.")
    if cfg.data_dir == "synthetic":
        # One process per machine writes the synthetic set (atomically); the others wait for it.
        data_dir = make_synthetic_dataset(**cfg.synthetic) if d.local_rank == 0 else None
        if d.world_size > 1:
            dist.barrier()
        data_dir = data_dir or make_synthetic_dataset(**cfg.synthetic)
    else:
        data_dir = Path(cfg.data_dir)
    classes = check_splits(data_dir, cfg.train_split, cfg.val_split)
    train_set = FolderDataset(str(data_dir / cfg.train_split), transform=train_transform(cfg))
    val_set = FolderDataset(str(data_dir / cfg.val_split),
                            transform=eval_transform(cfg.img_size, cfg.crop_pct, cfg.interpolation))
    return train_set, val_set, classes, data_dir


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run `cfg` describes; return its final metrics, run folder and model."""
    d = setup_distributed(cfg.device)
    try:
        return _train(cfg, d)
    finally:
        if d.initialised_here:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist) -> dict[str, Any]:
    torch.manual_seed(cfg.seed + d.rank)  # model init is broadcast from rank 0 by DDP; drop-path differs per rank
    import random

    import numpy as np

    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    if d.device.type == "cpu":
        # Data workers and compute threads share the cores. Oversubscribed, OpenMP's spinning threads slow every
        # small kernel down many times over, so by default the workers get their cores first.
        cores = len(os.sched_getaffinity(0)) // d.world_size if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(cfg.threads or max(1, (cores or 1) - cfg.workers))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    run_dir = _broadcast(resolve_run_dir(cfg) if d.primary else None, d)
    checkpoints = CheckpointDir(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    if d.primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # -- data ---------------------------------------------------------------------------------------------------
    train_set, val_set, classes, data_dir = _datasets(cfg, d)
    train_sampler = EpochSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=d.rank, world_size=d.world_size)
    val_sampler = EpochSampler(len(val_set), shuffle=False, rank=d.rank, world_size=d.world_size,
                               drop_remainder=False)
    steps_per_epoch = len(train_sampler) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} x {d.world_size} processes is more than the "
                         f"{len(train_set)} training images.")
    pin = d.device.type == "cuda" and cfg.pin_memory
    val_loader = make_loader(val_set, val_sampler, cfg.batch_size, cfg.workers, train=False, pin_memory=pin)

    # -- model, optimiser, schedule -------------------------------------------------------------------------------
    model = create_model(cfg.model, num_classes=len(classes), drop_path_rate=cfg.drop_path, img_size=cfg.img_size,
                         **cfg.model_kwargs)
    if cfg.initial_checkpoint:
        load_checkpoint(model, cfg.initial_checkpoint)
    model.to(d.device)
    lr = peak_lr(cfg, d.world_size)
    optimizer = build_optimizer(model, cfg, lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    amp_dtype = getattr(torch, cfg.amp_dtype) if cfg.amp and d.device.type == "cuda" else None
    autocast = (lambda: torch.autocast(d.device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None

    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=len(classes))
        criterion = SoftTargetCrossEntropy()  # mixup makes soft targets, smoothing included
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    # -- resume ---------------------------------------------------------------------------------------------------
    start_epoch, start_batch, best_top1, skipped_total = 0, 0, -1.0, 0
    resume_from = checkpoints.latest() if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume_from is not None:
        state = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, start_batch = state["epoch"], state["batch_in_epoch"]
        best_top1, skipped_total = state["best_top1"], state["skipped_images"]
        set_rng_state(state["rng"][d.rank] if d.rank < len(state["rng"]) else state["rng"][0])
        if d.primary:
            print(f"Resumed from {resume_from}: epoch {start_epoch}, batch {start_batch}.", flush=True)

    train_model = DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None) \
        if d.world_size > 1 else model
    log = MetricsLog(run_dir, d.primary, cfg.tensorboard)
    if d.primary:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"Run {run_dir}: {cfg.model} ({n_params / 1e6:.2f} M parameters), {len(classes)} classes, "
              f"{len(train_set)} train / {len(val_set)} val images from {data_dir}, {d.world_size} process(es) on "
              f"{d.device.type}, global batch {cfg.batch_size * d.world_size}, peak lr {lr:.3g}.", flush=True)

    def save(epoch: int, batch_in_epoch: int, step: int, is_best: bool = False) -> None:
        # Every process's RNG states go in, so each continues its own stream (drop-path, mixup) exactly.
        rngs = [rng_state()]
        if d.world_size > 1:
            rngs = [None] * d.world_size
            dist.all_gather_object(rngs, rng_state())
        if not d.primary:
            return
        checkpoints.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "best_top1": best_top1,
            "skipped_images": skipped_total, "rng": rngs, "config": cfg.to_dict(), "class_names": classes,
        }, step, is_best=is_best)

    # -- epochs ---------------------------------------------------------------------------------------------------
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        train_sampler.set_epoch(epoch, start=start_batch * cfg.batch_size)
        train_loader = make_loader(train_set, train_sampler, cfg.batch_size, cfg.workers, train=True, pin_memory=pin)
        bar = _progress(steps_per_epoch, start_batch, f"epoch {epoch + 1}/{cfg.epochs}", d.primary and cfg.progress)
        loss_sum, loss_count, seen, tick, epoch_start = 0.0, 0, 0, time.perf_counter(), time.perf_counter()
        interval_sum, interval_count = 0.0, 0  # the logged train loss is the mean since the previous line
        for batch_in_epoch, (images, targets, skipped) in enumerate(train_loader, start=start_batch):
            step = epoch * steps_per_epoch + batch_in_epoch
            if skipped:
                skipped_total += len(skipped)
                warn_skipped(skipped)
            if mixup is not None and len(images) % 2:  # batch-mode mixup pairs images: keep an even count
                images, targets = images[:-1], targets[:-1]
            if _nothing_to_learn(len(images) == 0, d):  # (nearly) every file of a batch unreadable
                continue
            images, targets = images.to(d.device, non_blocking=True), targets.to(d.device, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)  # targets: (B, K) soft
            with autocast():
                loss = criterion(train_model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(num_updates=step + 1)
            if ema is not None:
                ema.update(model, step=step)

            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"Loss is {loss_value} at step {step}; stopping.")
            loss_sum, loss_count, seen = loss_sum + loss_value, loss_count + 1, seen + len(images)
            interval_sum, interval_count = interval_sum + loss_value, interval_count + 1
            if bar is not None:
                rate = seen * d.world_size / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rate:.0f}", refresh=False)
                bar.update()
            if (step + 1) % cfg.log_interval == 0:
                log.write("train", step + 1, epoch=epoch + batch_in_epoch / steps_per_epoch,
                          loss=interval_sum / interval_count, lr=optimizer.param_groups[0]["lr"],
                          images_per_second=seen * d.world_size / (time.perf_counter() - tick))
                interval_sum, interval_count = 0.0, 0
            if cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0 \
                    and batch_in_epoch + 1 < steps_per_epoch:
                save(epoch, batch_in_epoch + 1, step + 1)
        if bar is not None:
            bar.close()
        start_batch = 0
        step = (epoch + 1) * steps_per_epoch
        epoch_time = time.perf_counter() - epoch_start
        if d.world_size > 1:
            _check_in_sync(model, d)

        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_count, 1), "epoch_seconds": epoch_time,
                   "lr": optimizer.param_groups[0]["lr"], "skipped_images": skipped_total}
        is_best = False
        if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs:
            val = evaluate(model, val_loader, d.device, amp_dtype)
            metrics.update({f"val_{k}": v for k, v in val.items() if k != "skipped_images"})
            if ema is not None:
                val_ema = evaluate(ema.module, val_loader, d.device, amp_dtype)
                metrics.update({f"val_ema_{k}": v for k, v in val_ema.items() if k != "skipped_images"})
            is_best = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
        metrics["best_top1"] = best_top1
        log.write("epoch", step, **metrics)
        if d.primary:
            summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(summary, flush=True)
        save(epoch + 1, 0, step, is_best=is_best)
    log.close()
    if skipped_total and d.primary:
        warnings.warn(f"{skipped_total} unreadable images were skipped; see the log above.", stacklevel=2)
    return {**metrics, "run_dir": run_dir, "model": model, "class_names": classes}
