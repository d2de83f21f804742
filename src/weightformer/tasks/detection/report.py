"""Pictures of what a detector does: boxes, masks, class names and scores drawn on images (PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

from ...engine.data import Unreadable
from .data import CocoDetection

__all__ = ["class_colours", "draw_detections", "plot_detections"]


def class_colours(num_classes: int) -> np.ndarray:
    """(K + 1, 3) uint8 colours, row k for label k (row 0, the background, unused)."""
    rng = np.random.default_rng(1)
    return rng.integers(60, 256, (num_classes + 1, 3)).astype(np.uint8)


def draw_detections(image: Image.Image, boxes: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                    scores: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                    scale: float = 1.0) -> Image.Image:
    """`image` (RGB) with each object's mask tinted, its box outlined and "name score" written above it.

    boxes: (N, 4) xyxy in the image's pixels; labels: (N,) in 1..K; scores: (N,) or None (ground truth);
    masks: (N, H, W) binary or in [0, 1] (thresholded at 0.5), or None. `scale` enlarges the picture first.
    """
    colours = class_colours(len(class_names))
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)  # (H, W, 3)
    if masks is not None:
        for mask, label in zip(masks, labels, strict=True):
            inside = mask.cpu().numpy() > 0.5  # (H, W)
            rgb[inside] = 0.45 * rgb[inside] + 0.55 * colours[int(label)]
    out = Image.fromarray(rgb.astype(np.uint8))
    if scale != 1.0:
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
        colour = tuple(int(c) for c in colours[label])
        x1, y1, x2, y2 = (c * scale for c in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        text = class_names[label - 1] + (f" {float(scores[i]):.2f}" if scores is not None else "")
        top = max(0.0, y1 - 11)
        draw.rectangle((x1, top, x1 + 6 * len(text) + 2, top + 10), fill=colour)
        draw.text((x1 + 1, top - 1), text, fill=(0, 0, 0))
    return out


@torch.no_grad()
def plot_detections(model: nn.Module, dataset: CocoDetection, class_names: list[str], out: str | Path,
                    device: torch.device | str = "cpu", count: int = 6, threshold: float = 0.5) -> Path:
    """A grid of validation images: the annotations on the left, the predictions (score >= threshold) on the
    right, one image per row (masks too, unless the data or the model has none); small images are enlarged to
    about 256 pixels. Returns the PNG's path."""
    model.eval()
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    rows = []
    for i in picks:
        image = dataset.read_image(int(i))
        if isinstance(image, Unreadable):
            continue
        x, _ = dataset[int(i)]
        truth = dataset._target(dataset.split.images[int(i)], with_masks=dataset.split.masks)
        output = model([x.to(device)])[0]
        keep = output["scores"] >= threshold
        scale = max(1.0, 256 / max(image.size))
        masks = output["masks"][keep, 0].cpu() if "masks" in output else None  # box-only: boxes alone
        left = draw_detections(image, truth["boxes"], truth["labels"], class_names, masks=truth.get("masks"),
                               scale=scale)
        right = draw_detections(image, output["boxes"][keep].cpu(), output["labels"][keep].cpu(), class_names,
                                output["scores"][keep].cpu(), masks, scale=scale)
        rows.append((left, right))
    if not rows:
        raise ValueError("No readable validation image to draw predictions on.")
    width = max(a.width + b.width for a, b in rows) + 4
    sheet = Image.new("RGB", (width, sum(a.height for a, _ in rows) + 2 * len(rows)), (255, 255, 255))
    top = 0
    for left, right in rows:
        sheet.paste(left, (0, top))
        sheet.paste(right, (left.width + 4, top))
        top += left.height + 2
    out = Path(out)
    sheet.save(out)
    return out
