"""Evaluation as an engine step: the one validation loop of every task, on one process or many.

A task says what one validation batch contributes (`Task.validation_step`) to which metric objects
(`Task.validation_metrics`); this loop owns the rest: eval mode and no_grad, moving batches to the device,
autocast in the run's precision, counting unreadable samples, the throughput, and the one reduction over
processes (metrics.py). The engine calls it at the end of an epoch for the model and for its EMA weights; the
`eval` commands of every task call it on a checkpoint.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from .data import warn_skipped
from .distributed import Dist
from .metrics import Metric, compute_metrics, reduce_metrics

__all__ = ["evaluate", "to_device"]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """torch.autocast in `amp_dtype` on `device`, or nothing when the run is in full precision."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@torch.no_grad()
def evaluate(task: Any, model: nn.Module, loader: Any, d: Dist, amp_dtype: torch.dtype | None = None
             ) -> dict[str, Any]:
    """`task`'s validation metrics of `model` over `loader` (Collated batches; each process sees its share).

    Returns the metrics' values plus `images` (samples evaluated, all processes), `skipped_samples` (unreadable,
    all processes) and `images_per_second`. Raises a one-line ValueError when no sample could be read.
    """
    was_training = model.training
    model.eval()
    named: dict[str, Metric] = task.validation_metrics()
    metrics = [m.to(d.device) for m in named.values()]
    counts = Counts().to(d.device)
    start = time.perf_counter()
    for collated in loader:
        if collated.skipped:
            warn_skipped(collated.skipped)
        counts.update(collated.size, len(collated.skipped))
        if collated.batch is None:
            continue
        with autocast(d.device, amp_dtype):
            task.validation_step(model, to_device(collated.batch, d.device), named)
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    counts.seconds.append(time.perf_counter() - start)
    reduce_metrics([*metrics, counts], d)
    images, skipped = int(counts.images.item()), int(counts.skipped.item())
    if images == 0:
        raise ValueError(f"No readable images to evaluate ({skipped} unreadable).")
    values = compute_metrics(metrics, d)
    model.train(was_training)
    # Throughput over the slowest process's time: the same number on every rank.
    return {**values, "images": images, "skipped_samples": skipped,
            "images_per_second": images / max(counts.seconds)}


class Counts(Metric):
    """Samples evaluated and samples skipped as unreadable (kept by the engine for every task), and each process's
    evaluation time."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("images", torch.zeros(()))
        self.add_state("skipped", torch.zeros(()))
        self.add_state("seconds", [], reduce="cat")

    def update(self, images: int, skipped: int) -> None:
        self.images += images
        self.skipped += skipped

    def compute(self) -> dict[str, float]:
        return {"images": int(self.images.item()), "skipped_samples": int(self.skipped.item())}
