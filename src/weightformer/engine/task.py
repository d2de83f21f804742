"""The task interface: what a task (classification, generation, detection, ...) tells the engine.

A task knows its data, its model, its loss and its metrics; the engine knows processes, devices, precision,
the optimiser and schedule, gradient accumulation, EMA, clipping, checkpoints, resumption, logging, progress,
signals and the validation loop (evaluation.py): a task says what one validation batch adds to which metrics,
never how to loop, move data or sum over processes. A task
subclasses `Task` and fills in the methods below; `Engine(task).fit()` runs it, on one process or under
torchrun, and nothing task-specific lives in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .config import EngineConfig
from .distributed import Dist
from .metrics import Metric

__all__ = ["Task", "Datasets"]


@dataclass
class Datasets:
    """A task's data: training and validation sets (items are samples or `Unreadable`), and a description.

    `groups`, optional, gives each training sample a group id (detection: its aspect-ratio bin); the engine then
    draws every optimiser step's global batch from one group (see EpochSampler), leaving out of each epoch what
    a group holds short of a whole batch."""

    train: Dataset
    val: Dataset | None
    description: str  # for the run's first log line, e.g. "9 classes, 9000 train / 1800 val images from DIR"
    groups: list[int] | None = None  # one id per training sample, or None: no grouping


class Task:
    """Base class of a task. Override every method that raises NotImplementedError; the others are optional."""

    name = "task"
    # The validation metric that selects best.pth, and whether higher is better.
    best_metric: str = "loss"
    best_is_higher: bool = False

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg

    def prepare_data(self) -> None:
        """Generate or download data once per node (called on each node's local rank 0, before build_datasets)."""

    def build_datasets(self, d: Dist) -> Datasets:
        """Build (and, on first use, generate) the data. Called on every rank, before the model is built."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The network, on the CPU, freshly initialised (the engine moves it, wraps it, loads checkpoints)."""
        raise NotImplementedError

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        """Turn readable samples into a batch: (batch, number of samples it holds).

        Returning fewer samples than given drops some (the engine counts them as `dropped_samples`).
        """
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch: Any) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of one batch (already on the device, inside autocast); `model` may be DDP-wrapped.

        May also return (loss, {name: value}) with the parts of a composite loss (the same names on every rank
        and step): the log then holds each part's mean as `loss_<name>` next to `loss`."""
        raise NotImplementedError

    def validation_metrics(self) -> dict[str, Metric]:
        """Fresh metric objects for one evaluation, by name (see metrics.py). The engine moves them to the
        device, reduces them over processes once, and merges their `compute()` values into the results."""
        raise NotImplementedError

    def validation_step(self, model: nn.Module, batch: Any, metrics: dict[str, Metric]) -> None:
        """Update `metrics` with one validation batch (already on the device, inside autocast, under no_grad;
        `model` is in eval mode, the EMA weights when the engine evaluates those)."""
        raise NotImplementedError

    def checkpoint_extras(self) -> dict[str, Any]:
        """Plain values saved with every checkpoint (e.g. class names), for tools that read checkpoints."""
        return {}

    def report(self, model: nn.Module, run_dir: Path, epoch: int, d: Dist) -> None:
        """Write a visual report of `model` (the EMA weights when kept) at the end of training: a sample grid,
        predictions drawn on images."""
