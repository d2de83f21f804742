"""Segmentation metrics (mIoU, aAcc from a confusion matrix summed over ranks) and whole / sliding inference."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ...engine.data import warn_skipped
from .data import IGNORE_INDEX

__all__ = ["confusion_matrix", "scores", "infer", "evaluate"]


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


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, num_classes: int,
             amp_dtype: torch.dtype | None = None, mode: str = "whole", crop: int = 512, stride: int = 341
             ) -> dict[str, float]:
    """mIoU / mAcc / aAcc (%) of `model` over `loader` (Collated batches of image and label lists); the logits are
    resized to each label map's own size. Under torch.distributed the confusion matrix is summed over ranks."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # images, skipped
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for collated in loader:
        if collated.skipped:
            warn_skipped(collated.skipped)
            counts[1] += len(collated.skipped)
        if collated.batch is None:
            continue
        for image, label in zip(*collated.batch, strict=True):
            with autocast:
                logits = infer(model, image.to(device), mode, crop, stride).float()  # (K, h, w)
            logits = F.interpolate(logits[None], size=label.shape, mode="bilinear", align_corners=False)[0]
            confusion += confusion_matrix(logits.argmax(0), label.to(device), num_classes)
            counts[0] += 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(confusion)
        dist.all_reduce(counts)
    if counts[0] == 0:
        raise ValueError(f"No readable images to evaluate ({int(counts[1])} unreadable).")
    return {**scores(confusion), "images": int(counts[0]), "skipped_samples": int(counts[1])}


def evaluate_checkpoint(checkpoint: str, data_dir: str, split: str = "validation", inference: str | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """Evaluate a checkpoint of `weightformer segment train` on <data_dir>/images|annotations/<split>."""
    from ...engine.checkpoint import read_training_checkpoint
    from ...engine.data import EpochSampler, make_loader
    from .config import SegmentationConfig
    from .data import SegmentationFolder, find_pairs
    from .task import SegmentationTask

    state = read_training_checkpoint(checkpoint)
    if state.get("task") != "segmentation":
        raise ValueError(f"{checkpoint} is a {state.get('task', 'classification')} checkpoint, not a segmentation one.")
    cfg = SegmentationConfig.from_dict({**state["config"], "data_dir": str(data_dir), "initial_checkpoint": None})
    task = SegmentationTask(cfg)
    model = task.build_model()
    model.load_state_dict(state["model"])
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    pairs, _ = find_pairs(data_dir, split)
    dataset = SegmentationFolder(pairs, cfg.num_classes, train=False, scale=tuple(cfg.scale), crop_size=cfg.crop_size,
                                 reduce_zero_label=cfg.reduce_zero_label)
    loader = make_loader(dataset, EpochSampler(len(dataset), shuffle=False), 1, 0,
                         lambda samples: task.collate(samples, train=False))
    return evaluate(model.to(dev), loader, dev, cfg.num_classes, None, inference or cfg.inference, cfg.crop_size,
                    cfg.slide_stride)
