"""One probe run as a Task of the training engine: a generated task, a model spec, a fixed step budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ...engine.config import EngineConfig, setting
from ...engine.distributed import Dist
from ...engine.loop import fit
from ...engine.task import Datasets, Task
from ..classification.data import collate_images
from ..classification.evaluate import ClassifierValidation
from .data import PROBE_TASKS, Knobs, ProbeDataset
from .models import build_probe_model

__all__ = ["ProbeConfig", "ProbeTask", "train_probe"]


@dataclass
class ProbeConfig(EngineConfig):
    """A probe run: the engine's values (set for short CPU runs) plus the task, its knobs and the model spec.

    The budget is `steps` optimiser steps of `batch_size` fresh images (one epoch of a generated training split
    exactly that long), so every model of a comparison sees the same number of images, none of them twice.
    """

    probe: str = setting("same_different", choices=tuple(PROBE_TASKS))
    model: str = "weightformer"  # a model spec, see tasks/probes/models.py
    sizes: dict[str, Any] | None = None  # default width / depth / patch of the specs
    # The knobs' ranges are Knobs.check's (data.py), run when the task is made.
    resolution: int = 64
    distance: float = 0.9
    size: float = 1 / 12
    distractors: int = 0
    colours: int = 6
    item_size: int = 4
    contour_length: int = 6
    steps: int = setting(400, ge=1)
    val_images: int = setting(512, ge=2)  # (both labels)

    # Engine values for short runs on a CPU.
    epochs: int = 1
    warmup_epochs: float = 0.05
    batch_size: int = 32
    lr: float | None = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    amp: bool = False
    workers: int = 0
    progress: bool = False
    tensorboard: bool = False
    log_interval: int = 50
    keep_checkpoints: int = 0

    def knobs(self) -> Knobs:
        return Knobs(resolution=self.resolution, distance=self.distance, size=self.size,
                     distractors=self.distractors, colours=self.colours, item_size=self.item_size,
                     contour_length=self.contour_length)


class ProbeTask(ClassifierValidation, Task):
    """Binary classification of a generated long-range probe; top-1 accuracy on a fixed validation split."""

    name = "probe"
    best_metric, best_is_higher = "top1", True

    def __init__(self, cfg: ProbeConfig) -> None:
        super().__init__(cfg)
        if cfg.epochs != 1:
            raise ValueError(f"A probe run is one epoch of `steps` fresh batches; epochs must be 1, not {cfg.epochs}.")
        cfg.knobs().check(cfg.probe)

    def build_datasets(self, d: Dist) -> Datasets:
        cfg, knobs = self.cfg, self.cfg.knobs()
        train = ProbeDataset(cfg.probe, knobs, cfg.steps * cfg.batch_size * d.world_size, cfg.seed, "train")
        # The validation images depend on the task and knobs only, not the seed: every run is scored on the same.
        val = ProbeDataset(cfg.probe, knobs, cfg.val_images, seed=0, split="val")
        return Datasets(train, val, f"probe {cfg.probe} {knobs.as_dict()}: {len(train)} train / {len(val)} val images")

    def build_model(self) -> nn.Module:
        return build_probe_model(self.cfg.model, num_classes=2, img_size=self.cfg.resolution, defaults=self.cfg.sizes)

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        return collate_images(samples)

    def training_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch  # (B, 3, R, R), (B,)
        return nn.functional.cross_entropy(model(images), targets)


def train_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Train and evaluate one probe run on the engine; its final metrics, run folder and model."""
    return fit(ProbeTask(cfg))
