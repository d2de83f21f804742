"""The embedded segmentation dataset: shapes on textured backgrounds, with per-pixel labels, in ADE20K's layout.

Each image holds 2 to 5 shapes (circle, square, triangle) of random colours, sizes and positions, drawn in
random order so that later shapes occlude earlier ones, on a background of random colour with noise. The label
map gives every pixel its class: 0 background, 1 circle, 2 square, 3 triangle. Colours carry no information;
shapes do. Written once, deterministically by seed, as `images/{training,validation}/*.png` and
`annotations/{training,validation}/*.png` (ADE20K's folder layout), atomically, to the cache folder.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..classification.synthetic import default_cache_root

__all__ = ["CLASS_NAMES", "VERSION", "render_scene", "make_segmentation_dataset"]

VERSION = 1
CLASS_NAMES = ("background", "circle", "square", "triangle")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    return None  # circle: an ellipse


def render_scene(size: int, rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, label map) pair of side `size`."""
    base = tuple(rng.randint(0, 120) for _ in range(3))
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-20, 21, (size, size, 3))
    image = Image.fromarray(np.clip(np.array(base)[None, None] + noise, 0, 255).astype(np.uint8))
    label = Image.new("L", (size, size), 0)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(rng.randint(2, 5)):
        cls = rng.randint(1, 3)
        r = rng.uniform(0.08, 0.2) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        colour = tuple(rng.randint(100, 255) for _ in range(3))
        points = _polygon(CLASS_NAMES[cls], cx, cy, r)
        if points is None:
            box = [cx - r, cy - r, cx + r, cy + r]
            draw_image.ellipse(box, fill=colour)
            draw_label.ellipse(box, fill=cls)
        else:
            draw_image.polygon(points, fill=colour)
            draw_label.polygon(points, fill=cls)
    return image, label


def make_segmentation_dataset(root: str | Path | None = None, seed: int = 0, image_size: int = 96,
                              train_images: int = 2000, val_images: int = 200) -> Path:
    """Write the dataset (if not already there) and return its folder (ADE20K layout)."""
    root = Path(root) if root is not None else default_cache_root()
    name = f"segmentation-v{VERSION}-seed{seed}-{image_size}px-{train_images}x{val_images}"
    path = root / name
    if (path / "annotations" / "validation").is_dir():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for split_index, (split, count) in enumerate((("training", train_images), ("validation", val_images))):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations" / split).mkdir(parents=True)
            rng = random.Random(f"{seed}/{split_index}")
            for i in range(count):
                image, label = render_scene(image_size, rng)
                image.save(tmp / "images" / split / f"{i:05d}.png")
                label.save(tmp / "annotations" / split / f"{i:05d}.png")
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same dataset first; theirs is identical
            if not (path / "annotations" / "validation").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
