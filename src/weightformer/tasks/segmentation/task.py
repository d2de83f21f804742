"""Semantic segmentation as a Task of the training engine: ADE20K-layout data, UperNet, pixel cross-entropy, mIoU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...engine.distributed import Dist
from ...engine.loop import fit
from ...engine.metrics import Metric
from ...engine.task import Datasets, Task
from ...models.segmentation import create_segmenter
from .config import SegmentationConfig
from .data import IGNORE_INDEX, SegmentationFolder, find_pairs
from .evaluate import ConfusionMetric, segmentation_step
from .synthetic import make_segmentation_dataset

__all__ = ["SegmentationTask", "train"]


class SegmentationTask(Task):
    """Per-pixel classification with UperNet on WeightFormer's (or DeiT's) simple feature pyramid."""

    name = "segmentation"
    best_metric, best_is_higher = "miou", True

    def __init__(self, cfg: SegmentationConfig) -> None:
        super().__init__(cfg)
        if cfg.data_dir is None:
            raise ValueError("No dataset: set data_dir (--data-dir /path/to/ADEChallengeData2016, holding images/ "
                             "and annotations/), or --data-dir synthetic for the built-in one.")
        if cfg.class_names is not None and len(cfg.class_names) != cfg.num_classes:
            raise ValueError(f"class_names has {len(cfg.class_names)} names for {cfg.num_classes} classes.")
        self.class_names = cfg.class_names or [f"class {i}" for i in range(cfg.num_classes)]

    def _data_dir(self) -> Path:
        cfg = self.cfg
        return make_segmentation_dataset(**cfg.synthetic) if cfg.data_dir == "synthetic" else Path(cfg.data_dir)

    def prepare_data(self) -> None:
        if self.cfg.data_dir == "synthetic":
            make_segmentation_dataset(**self.cfg.synthetic)

    def build_datasets(self, d: Dist) -> Datasets:
        cfg = self.cfg
        data_dir = self._data_dir()
        (train_pairs, unlabelled_train), (val_pairs, unlabelled_val) = (
            find_pairs(data_dir, cfg.train_split), find_pairs(data_dir, cfg.val_split))
        common = dict(num_classes=cfg.num_classes, scale=tuple(cfg.scale), crop_size=cfg.crop_size,
                      reduce_zero_label=cfg.reduce_zero_label)
        train = SegmentationFolder(train_pairs, train=True, ratio_range=tuple(cfg.ratio_range), hflip=cfg.hflip,
                                   **common)
        self.val_dataset = SegmentationFolder(val_pairs, train=False, **common)
        unlabelled = len(unlabelled_train) + len(unlabelled_val)
        note = f" ({unlabelled} images without a label map left out, e.g. {(unlabelled_train + unlabelled_val)[0]})" \
            if unlabelled else ""
        return Datasets(train, self.val_dataset, f"{cfg.num_classes} classes, {len(train_pairs)} train / "
                                                 f"{len(val_pairs)} val images from {data_dir}{note}")

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        images, labels = [s[0] for s in samples], [s[1] for s in samples]
        if train:  # fixed crops: one tensor each
            return (torch.stack(images), torch.stack(labels)), len(samples)
        return (images, labels), len(samples)  # evaluation: each image at its own size

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        return create_segmenter(cfg.backbone, cfg.num_classes, cfg.out_channels, cfg.head_channels,
                                checkpoint=cfg.initial_checkpoint, drop_path_rate=cfg.drop_path, **cfg.model_kwargs)

    def training_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch  # (B, 3, c, c), (B, c, c)
        logits = model(images)  # (B, K, c, c)
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)

    def validation_metrics(self) -> dict[str, Metric]:
        return {"confusion": ConfusionMetric(self.cfg.num_classes)}

    def validation_step(self, model: nn.Module, batch: tuple[list, list], metrics: dict[str, Metric]) -> None:
        cfg = self.cfg
        segmentation_step(model, *batch, metrics["confusion"], cfg.inference, cfg.crop_size, cfg.slide_stride)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"class_names": self.class_names}

    def report(self, model: nn.Module, run_dir: Path, epoch: int, d: Dist) -> None:
        """Validation images with the predicted classes overlaid, to <run>/predictions.png (rank 0)."""
        if d.primary:
            from .report import plot_segmentations

            path = plot_segmentations(model, self.val_dataset, self.class_names, run_dir / "predictions.png",
                                      d.device)
            print(f"Predictions on validation images: {path}", flush=True)


def train(cfg: SegmentationConfig) -> dict[str, Any]:
    """Train (or resume) the segmentation run `cfg` describes."""
    return fit(SegmentationTask(cfg))
