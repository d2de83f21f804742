"""Image classification as a Task of the training engine: folder data, WeightFormer, (soft) cross-entropy, top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ...engine.distributed import Dist
from ...engine.loop import fit
from ...engine.task import Datasets, Task
from ...models import create_model, load_checkpoint
from .config import ClassificationConfig
from .data import collate_images, eval_transform, train_transform
from .evaluate import ClassifierValidation
from .sources import DataSource
from .synthetic import dataset_folder

__all__ = ["ClassificationTask", "build_classifier", "checkpoint_model", "train"]


def build_classifier(cfg: ClassificationConfig, num_classes: int) -> nn.Module:
    """The network a config describes, freshly initialised: a WeightFormer, or any timm model (a baseline)."""
    return create_model(cfg.model, num_classes=num_classes, drop_path_rate=cfg.drop_path, img_size=cfg.img_size,
                        **cfg.model_kwargs)


def checkpoint_model(cfg: ClassificationConfig, extras: dict[str, Any]) -> nn.Module:
    """The network of a classification checkpoint: one output per class name it saved."""
    return build_classifier(cfg, len(extras["class_names"]))


class ClassificationTask(ClassifierValidation, Task):
    """ImageNet-style classification: the release's recipe (README "Training and evaluation") or the embedded
    synthetic default."""

    name = "classification"
    best_metric, best_is_higher = "top1", True

    def __init__(self, cfg: ClassificationConfig) -> None:
        super().__init__(cfg)
        if cfg.data_dir is None:
            raise ValueError(f"No dataset: set data_dir (--data-dir /path/to/imagenet, holding {cfg.train_split}/ "
                             f"and {cfg.val_split}/; wds:DIR, hf:DIR or hf-stream:DIR), or --data-dir synthetic for "
                             "the built-in one.")
        self.mixing = cfg.mixup > 0 or cfg.cutmix > 0
        if self.mixing and cfg.mixup_mode == "batch" and cfg.batch_size % 2:
            raise ValueError(f"Mixup/CutMix in batch mode pairs images: batch_size must be even, not "
                             f"{cfg.batch_size}.")
        self.classes: list[str] = []

    # -- data -------------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        dataset_folder(self.cfg.data_dir, self.cfg.synthetic)  # the embedded set is generated here, once per node

    def build_datasets(self, d: Dist) -> Datasets:
        cfg = self.cfg
        source = DataSource.from_config(cfg)
        train_set, val_set, self.classes = source.open_splits(
            cfg.train_split, cfg.val_split, train_transform(cfg),
            eval_transform(cfg.img_size, cfg.crop_pct, cfg.interpolation))
        self.val_dataset, self.mixup = val_set, None
        if self.mixing:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                               label_smoothing=cfg.smoothing, num_classes=len(self.classes))
        return Datasets(train_set, val_set, f"{len(self.classes)} classes, {len(train_set)} train / {len(val_set)} "
                                            f"val images from {source}")

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        if train and self.mixup is not None and self.cfg.mixup_mode == "batch" and len(samples) % 2:
            samples = samples[:-1]  # batch-mode Mixup pairs images; an unreadable file made the count odd
        if not samples:
            return None, 0
        return collate_images(samples)

    # -- model and loss ---------------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        model = build_classifier(cfg, len(self.classes))
        if cfg.initial_checkpoint:
            load_checkpoint(model, cfg.initial_checkpoint)
        if self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()  # Mixup makes soft targets, smoothing included
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        return model

    def training_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch  # (B, 3, H, W), (B,)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)  # targets: (B, K) soft
        return self.criterion(model(images), targets)

    # -- reports -------------------------------------------------------------------------------

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"class_names": self.classes}

    def report(self, model: nn.Module, run_dir: Path, epoch: int, d: Dist) -> None:
        """Validation images with predicted and true classes, to <run>/predictions.png (rank 0)."""
        if d.primary:
            from .report import plot_predictions

            path = plot_predictions(model, self.val_dataset, self.classes, run_dir / "predictions.png", d.device)
            print(f"Predictions on validation images: {path}", flush=True)


def train(cfg: ClassificationConfig) -> dict[str, Any]:
    """Train (or resume) the classification run `cfg` describes; return its final metrics, run folder and model."""
    return fit(ClassificationTask(cfg))
