"""A picture of what a classifier does: validation images with the predicted and the true class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

from ...engine.data import StreamDataset, Unreadable

_Example = tuple[Image.Image, tuple[torch.Tensor, int]]

__all__ = ["plot_predictions"]


@torch.no_grad()
def plot_predictions(model: nn.Module, dataset: Any, class_names: list[str], out: str | Path,
                     device: torch.device | str = "cpu", count: int = 16) -> Path:
    """Draw `count` validation images spread over the set (every class when possible), each titled with the
    predicted class and its probability, green when right and red when wrong; return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    samples = _examples(dataset, count)
    model.eval()
    images = torch.stack([image for _, (image, _) in samples]).to(device)  # (n, 3, H, W)
    probs = model(images).float().softmax(dim=-1).cpu()  # (n, K)
    cols = 4
    rows = (len(samples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (shown, (_, target)), p in zip(axes.flat, samples, probs, strict=False):
        ax.imshow(shown)
        guess = int(p.argmax())
        colour = "tab:green" if guess == target else "tab:red"
        ax.set_title(f"{class_names[guess]} {100 * p[guess]:.0f} %\n(true: {class_names[target]})", fontsize=8,
                     color=colour)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _examples(dataset: Any, count: int) -> list[_Example]:
    """Up to `count` readable (image as stored, (model input, class)) pairs spread evenly over `dataset` (any
    classification source: read by index, or a stream read once in its own order)."""
    picks = set(torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().tolist())
    if isinstance(dataset, StreamDataset):
        records = (r for i, r in enumerate(dataset.records(None)) if i in picks)
        pairs = [(dataset.original(r), dataset.load(r, 0)) for _, r in zip(range(len(picks)), records, strict=False)]
    else:
        pairs = [(dataset.original(i), dataset[i]) for i in sorted(picks)]
    return [(shown, sample) for shown, sample in pairs
            if not isinstance(sample, Unreadable) and not isinstance(shown, Unreadable)]
