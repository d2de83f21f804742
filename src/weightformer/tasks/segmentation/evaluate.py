"""Segmentation metrics (mIoU, aAcc from a confusion matrix) and whole / sliding inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...engine.distributed import Dist, resolve_device
from ...engine.evaluation import evaluate
from ...engine.metrics import Metric
from ..loader import load_run_model
from .data import IGNORE_INDEX

__all__ = ["confusion_matrix", "scores", "infer", "ConfusionMetric", "segmentation_step", "evaluate_checkpoint",
           "predict_images"]


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows the true class and columns the predicted one, over pixels not ignored."""
    valid = label != IGNORE_INDEX
    index = label[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes).double()


def scores(confusion: torch.Tensor) -> dict[str, float]:
    """mIoU and mAcc over the classes present (in the labels or the predictions), and aAcc, in percent."""
    tp = confusion.diag()
    truth, predicted = confusion.sum(1), confusion.sum(0)
    union = truth + predicted - tp
    present = union > 0
    iou = tp[present] / union[present]
    acc = tp[truth > 0] / truth[truth > 0]
    return {"miou": 100 * iou.mean().item() if present.any() else 0.0,
            "macc": 100 * acc.mean().item() if (truth > 0).any() else 0.0,
            "aacc": 100 * (tp.sum() / confusion.sum().clamp(min=1)).item()}


def infer(model: nn.Module, image: torch.Tensor, mode: str = "whole", crop: int = 512, stride: int = 341
          ) -> torch.Tensor:
    """Logits (K, h, w) of one image (3, h, w): the whole image at once, or averaged over sliding windows."""
    if mode == "whole":
        return model(image[None])[0]
    if mode != "slide":
        raise ValueError(f"inference must be whole or slide, not {mode!r}.")
    _, h, w = image.shape
    rows = range(0, max(h - crop, 0) + stride, stride)
    cols = range(0, max(w - crop, 0) + stride, stride)
    logits, count = None, torch.zeros(1, h, w, device=image.device)
    for top in rows:
        for left in cols:
            t, l_ = min(top, max(h - crop, 0)), min(left, max(w - crop, 0))
            window = image[:, t: t + crop, l_: l_ + crop]
            out = model(window[None])[0]  # (K, hc, wc)
            if logits is None:
                logits = torch.zeros(out.shape[0], h, w, device=image.device, dtype=out.dtype)
            logits[:, t: t + crop, l_: l_ + crop] += out
            count[:, t: t + crop, l_: l_ + crop] += 1
    return logits / count


class ConfusionMetric(Metric):
    """mIoU / mAcc / aAcc (%) from a (K, K) confusion matrix of predicted against true labels."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("confusion", torch.zeros(num_classes, num_classes))

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        self.confusion += confusion_matrix(pred, label, self.num_classes)

    def compute(self) -> dict[str, float]:
        return scores(self.confusion)


def segmentation_step(model: nn.Module, images: list[torch.Tensor], labels: list[torch.Tensor],
                      metric: ConfusionMetric, mode: str = "whole", crop: int = 512, stride: int = 341) -> None:
    """Add one batch (lists of (3, h, w) images and (h', w') label maps) to `metric`: whole or sliding
    inference, logits resized to each label map's own size."""
    for image, label in zip(images, labels, strict=True):
        logits = infer(model, image, mode, crop, stride).float()  # (K, h, w)
        logits = F.interpolate(logits[None], size=label.shape, mode="bilinear", align_corners=False)[0]
        metric.update(logits.argmax(0), label)


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "validation",
                        inference: str | None = None, device: str = "auto", ema: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint of `weightformer segment train` (its EMA weights unless `ema=False`) on
    <data_dir>/images|annotations/<split>."""
    from ...engine.data import EpochSampler, make_loader
    from .data import SegmentationFolder, find_pairs
    from .task import SegmentationTask

    pairs, _ = find_pairs(data_dir, split)
    run = load_run_model(checkpoint, "segmentation", ema)
    model, cfg = run.model, run.config
    dataset = SegmentationFolder(pairs, cfg.num_classes, train=False, scale=tuple(cfg.scale), crop_size=cfg.crop_size,
                                 reduce_zero_label=cfg.reduce_zero_label)
    loader = make_loader(dataset, EpochSampler(len(dataset), shuffle=False), 1, 0, _collate_lists)
    if inference is not None:
        cfg.inference = inference
    dev = resolve_device(device)
    return evaluate(SegmentationTask(cfg), model.to(dev), loader, Dist(device=dev))


def _collate_lists(samples: list[Any]) -> tuple[Any, int]:
    return ([s[0] for s in samples], [s[1] for s in samples]), len(samples)


@torch.no_grad()
def predict_images(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path,
                   inference: str | None = None, device: str = "auto", ema: bool = True
                   ) -> list[tuple[Path, dict[str, float]]]:
    """Segment each image (with the checkpoint's EMA weights unless `ema=False`); write
    <out_dir>/<stem>-segmentation.png (image, prediction overlay) and return, per image, the PNG's path and the
    fraction of pixels of each predicted class."""
    import numpy as np
    from PIL import Image

    from ..classification.evaluate import _open_image
    from .data import SegmentationFolder
    from .report import colourise

    dev = resolve_device(device)
    run = load_run_model(checkpoint, "segmentation", ema, dev)
    model, cfg = run.model, run.config
    names = cfg.class_names or [f"class {i}" for i in range(cfg.num_classes)]
    fit = SegmentationFolder([], cfg.num_classes, train=False, scale=tuple(cfg.scale), crop_size=cfg.crop_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        image = _open_image(path)
        resized, _ = fit._fit(image, None, 1.0)
        x = (torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255 - fit.mean) / fit.std  # (3, h, w)
        logits = infer(model, x.to(dev), inference or cfg.inference, cfg.crop_size, cfg.slide_stride)[None]
        pred = F.interpolate(logits, size=(image.height, image.width), mode="bilinear")[0].argmax(0).cpu().numpy()
        overlay = (0.4 * np.asarray(image) + 0.6 * colourise(pred, cfg.num_classes)).astype(np.uint8)
        target = out_dir / f"{Path(path).stem}-segmentation.png"
        Image.fromarray(np.concatenate([np.asarray(image), overlay], axis=1)).save(target)
        counts = np.bincount(pred.ravel(), minlength=cfg.num_classes) / pred.size
        results.append((target, {names[c]: float(counts[c]) for c in np.argsort(-counts) if counts[c] > 0}))
    return results
