"""A picture of what a segmenter does: validation images, their labels and the predictions, coloured by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...engine.data import Unreadable
from .data import IGNORE_INDEX, SegmentationFolder

__all__ = ["palette", "colourise", "plot_segmentations"]


def palette(num_classes: int) -> np.ndarray:
    """(K + 1, 3) uint8 colours, distinct per class; the last row (for the ignore index) is black."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, (num_classes, 3)).astype(np.uint8)
    return np.concatenate([colours, np.zeros((1, 3), np.uint8)])


def colourise(label: np.ndarray, num_classes: int) -> np.ndarray:
    """(h, w) class ids (IGNORE_INDEX allowed) -> (h, w, 3) uint8 colours."""
    index = np.where(label == IGNORE_INDEX, num_classes, label)
    return palette(num_classes)[index]


@torch.no_grad()
def plot_segmentations(model: nn.Module, dataset: SegmentationFolder, class_names: list[str], out: str | Path,
                       device: torch.device | str = "cpu", count: int = 4) -> Path:
    """A grid: each row an image, its label map and the prediction overlaid; return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    model.eval()
    picks = [i for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)]
    rows = [(i, s) for i in picks if not isinstance(s := dataset[int(i)], Unreadable)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    k = len(class_names)
    for (i, (image, label)), ax in zip(rows, axes, strict=True):
        logits = model(image[None].to(device)).float()  # (1, K, h, w)
        pred = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)[0].argmax(0).cpu()
        with Image.open(dataset.pairs[int(i)][0]) as shown:
            rgb = np.asarray(shown.convert("RGB").resize(label.shape[::-1]))
        ax[0].imshow(rgb)
        ax[1].imshow(colourise(label.numpy(), k))
        ax[2].imshow((0.4 * rgb + 0.6 * colourise(pred.numpy(), k)).astype(np.uint8))
        for a, title in zip(ax, ("image", "label", "prediction"), strict=True):
            a.set_title(title, fontsize=9)
            a.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette(k)[c] / 255) for c in range(k)]
    fig.legend(handles, class_names, loc="lower center", ncol=min(k, 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
