"""A picture of what a classifier does: validation images with the predicted and the true class."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ...engine.data import Unreadable
from .data import FolderDataset

__all__ = ["plot_predictions"]


@torch.no_grad()
def plot_predictions(model: nn.Module, dataset: FolderDataset, class_names: list[str], out: str | Path,
                     device: torch.device | str = "cpu", count: int = 16) -> Path:
    """Draw `count` validation images spread over the set (every class when possible), each titled with the
    predicted class and its probability, green when right and red when wrong; return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from PIL import Image

    picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique().tolist()
    samples = [(i, dataset[i]) for i in picks]
    samples = [(i, s) for i, s in samples if not isinstance(s, Unreadable)]
    model.eval()
    images = torch.stack([image for _, (image, _) in samples]).to(device)  # (n, 3, H, W)
    probs = model(images).float().softmax(dim=-1).cpu()  # (n, K)
    cols = 4
    rows = (len(samples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, (_, target)), p in zip(axes.flat, samples, probs, strict=False):
        with Image.open(dataset.samples[i][0]) as shown:
            ax.imshow(shown.convert("RGB"))
        guess = int(p.argmax())
        colour = "tab:green" if guess == target else "tab:red"
        ax.set_title(f"{class_names[guess]} {100 * p[guess]:.0f} %\n(true: {class_names[target]})", fontsize=8,
                     color=colour)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
