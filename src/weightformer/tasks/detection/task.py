"""Detection and instance segmentation as a Task of the training engine: COCO data, Mask R-CNN (Faster R-CNN on
box-only data), COCOeval, and aspect-ratio grouped training batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...engine.distributed import Dist
from ...engine.loop import fit
from ...engine.metrics import Metric
from ...engine.task import Datasets, Task
from ...models.detection import create_detector
from .config import DetectionConfig
from .data import (
    NO_MASK,
    CocoDetection,
    CocoSplit,
    aspect_ratio_groups,
    drop_too_thin,
    drop_unannotated,
    read_coco,
    require_pycocotools,
    split_paths,
)
from .evaluate import CocoMetric
from .synthetic import make_detection_dataset

__all__ = ["DetectionTask", "build_detector", "checkpoint_model", "train"]


def _test_size(cfg: DetectionConfig) -> tuple[int, int]:
    """(shorter side, longest allowed longer side) of the evaluation resize."""
    return (cfg.crop_size, cfg.crop_size) if cfg.scale_jitter is not None else (cfg.min_size[-1], cfg.max_size)


def build_detector(cfg: DetectionConfig, masks: bool = True) -> nn.Module:
    """The Mask R-CNN a config describes (LSJ recipes train and test at crop_size: see DetectionConfig), or its
    Faster R-CNN (no mask head) for box-only data."""
    if cfg.scale_jitter is not None:
        min_size, max_size = (cfg.crop_size,), cfg.crop_size
    else:
        min_size, max_size = tuple(cfg.min_size), cfg.max_size
    return create_detector(
        cfg.backbone, cfg.num_classes, cfg.out_channels, min_size=min_size, max_size=max_size,
        anchor_sizes=tuple(cfg.anchor_sizes), rpn_convs=cfg.rpn_convs, head_channels=cfg.head_channels,
        box_convs=cfg.box_convs, box_fc=cfg.box_fc, box_fcs=cfg.box_fcs, mask_convs=cfg.mask_convs,
        checkpoint=cfg.initial_checkpoint, drop_path_rate=cfg.drop_path, rcnn_kwargs=cfg.rcnn, masks=masks,
        **cfg.model_kwargs)


def checkpoint_model(cfg: DetectionConfig, extras: dict[str, Any]) -> nn.Module:
    """The network of a detection checkpoint: with a mask head unless the run trained boxes only (checkpoints
    written before box-only runs existed all have one)."""
    return build_detector(cfg, masks=extras.get("masks", True))


class DetectionTask(Task):
    """Boxes and instance masks with torchvision's Mask R-CNN on WeightFormer's (or DeiT's) simple feature pyramid."""

    name = "detection"
    best_metric, best_is_higher = "bbox_ap", True

    def __init__(self, cfg: DetectionConfig) -> None:
        super().__init__(cfg)
        if cfg.data_dir is None:
            raise ValueError("No dataset: set data_dir (--data-dir /path/to/coco, holding annotations/instances_"
                             "<split>.json and <split>/), or --data-dir synthetic for the built-in one.")
        require_pycocotools()
        if cfg.scale_jitter is not None and (len(cfg.scale_jitter) != 2 or not 0 < cfg.scale_jitter[0]
                                             <= cfg.scale_jitter[1]):
            raise ValueError(f"scale_jitter must be [low, high] with 0 < low <= high, got {cfg.scale_jitter}.")
        self.class_names: list[str] = []
        self.category_ids: list[int] = []
        self.masks = cfg.masks is not False  # settled by the training annotations when auto (None)

    def _data_dir(self) -> Path:
        cfg = self.cfg
        return make_detection_dataset(**cfg.synthetic) if cfg.data_dir == "synthetic" else Path(cfg.data_dir)

    def prepare_data(self) -> None:
        if self.cfg.data_dir == "synthetic":
            make_detection_dataset(**self.cfg.synthetic)

    def _read(self, data_dir: Path, split: str, masks: bool | None) -> CocoSplit:
        coco = read_coco(*split_paths(data_dir, split), masks=masks)
        if len(coco.categories) != self.cfg.num_classes:
            raise ValueError(f"{coco.annotation_file} has {len(coco.categories)} categories, but num_classes is "
                             f"{self.cfg.num_classes}: set --num-classes {len(coco.categories)}.")
        return coco

    def _read_train(self, data_dir: Path) -> CocoSplit:
        """The training split, its masks settled: refused in one line when auto finds only some annotations with
        one (the mask loss cannot be computed for part of a batch in torchvision's Mask R-CNN: choose)."""
        cfg = self.cfg
        train = self._read(data_dir, cfg.train_split, cfg.masks)
        if cfg.masks is None and train.masks and train.skipped[NO_MASK]:
            raise ValueError(f"{train.annotation_file}: {train.skipped[NO_MASK]} annotations have no segmentation "
                             f"(e.g. {train.examples[NO_MASK]}) and the others have one: set --masks true to train "
                             "masks without those annotations, or --masks false to train boxes only.")
        self.masks = train.masks
        drop_unannotated(train)
        if cfg.scale_jitter is None:  # (LSJ resizes in the dataset, to crop_size squared, any image)
            drop_too_thin(train, min(cfg.min_size), cfg.max_size)
        if not train.images:
            raise ValueError(f"{train.annotation_file} has no image with a usable annotation to train on: "
                             f"{train.describe_skipped()}.")
        return train

    def build_datasets(self, d: Dist) -> Datasets:
        cfg = self.cfg
        data_dir = self._data_dir()
        train = self._read_train(data_dir)
        self.class_names, self.category_ids = train.class_names, train.category_ids
        self.val_split = self._read(data_dir, cfg.val_split, self.masks) if cfg.val_split else None
        if self.val_split is not None:
            drop_too_thin(self.val_split, *_test_size(cfg))
        if self.val_split is not None and self.val_split.category_ids != train.category_ids:
            raise ValueError(f"The {cfg.val_split} and {cfg.train_split} annotation files list different categories.")
        jitter = tuple(cfg.scale_jitter) if cfg.scale_jitter is not None else None
        train_set = CocoDetection(train, train=True, hflip=cfg.hflip, scale_jitter=jitter, crop_size=cfg.crop_size)
        self.val_dataset = CocoDetection(self.val_split, train=False) if self.val_split is not None else None
        description = f"{cfg.num_classes} classes, {len(train.images)} train"
        description += f" / {len(self.val_split.images)} val images" if self.val_split else " images"
        description += f" from {data_dir}" + ("" if self.masks else ", boxes only")
        for name, split in (("train", train), ("val", self.val_split)):
            if split is not None and split.skipped:
                description += f"; left out of {name}: {split.describe_skipped()}"
        groups = None
        if cfg.aspect_ratio_group_factor >= 0:  # batches of one aspect-ratio bin: less padding in the model
            groups = aspect_ratio_groups(train.images, cfg.aspect_ratio_group_factor)
        return Datasets(train_set, self.val_dataset, description, groups)

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        return ([s[0] for s in samples], [s[1] for s in samples]), len(samples)  # each image at its own size

    def build_model(self) -> nn.Module:
        return build_detector(self.cfg, self.masks)

    def training_loss(self, model: nn.Module, batch: tuple[list, list]) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of Mask R-CNN's five losses (RPN objectness and box, classifier, box regression, mask; no mask
        loss on box-only data); each is also returned for the log."""
        images, targets = batch
        targets = [{k: v for k, v in t.items() if k != "image_id"} for t in targets]
        losses = model(images, targets)
        total = sum(v.float() for v in losses.values())
        return total, {name.removeprefix("loss_"): v.item() for name, v in losses.items()}

    def validation_metrics(self) -> dict[str, Metric]:
        return {"coco": CocoMetric(self.val_split)}

    def validation_step(self, model: nn.Module, batch: tuple[list, list], metrics: dict[str, Metric]) -> None:
        images, targets = batch  # lists: each image at its own size
        metrics["coco"].update(model(images), targets)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "category_ids": self.category_ids, "masks": self.masks}

    def report(self, model: nn.Module, run_dir: Path, epoch: int, d: Dist) -> None:
        """Validation images with their annotations and the predictions, to <run>/predictions.png (rank 0)."""
        if d.primary and self.val_dataset is not None:
            from .report import plot_detections

            path = plot_detections(model, self.val_dataset, self.class_names, run_dir / "predictions.png", d.device,
                                   threshold=self.cfg.draw_threshold)
            print(f"Predictions on validation images: {path}", flush=True)


def train(cfg: DetectionConfig) -> dict[str, Any]:
    """Train (or resume) the detection run `cfg` describes."""
    return fit(DetectionTask(cfg))
