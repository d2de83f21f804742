"""The embedded default dataset: "which shape is left of which", generated procedurally, no download.

Every image holds two shapes (circle, square or triangle) side by side; the class is the ordered pair
(left shape, right shape), 9 classes. Colours of shapes and background, sizes and positions are random and
independent of the class, so colour statistics say nothing: a model has to recognise shapes, and has to relate
them in space to tell "circle left of square" from "square left of circle". Shapes are light on a dark
background (each colour drawn at random within its range): with the contrast's sign fixed, a small network
learns the task from scratch in minutes on a CPU, which is what the embedded default is for.

The dataset is written once, as PNG files in the ImageNet folder layout (`train/<class>/*.png`,
`val/<class>/*.png`), to a cache folder keyed by version and seed, so training on it exercises exactly the code
path of real data. Generation is deterministic by seed (pixel-identical across runs) and atomic: it is written
to a temporary folder and renamed into place, so a crash mid-way never leaves a half dataset behind.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["SHAPES", "CLASS_NAMES", "KINDS", "VERSION", "default_cache_root", "render_example", "render_plain_shape",
           "make_synthetic_dataset", "dataset_folder"]

# Bump when the images a seed produces change, so old caches are not reused.
VERSION = 3
SHAPES = ("circle", "square", "triangle")
CLASS_NAMES = tuple(f"{left}-left-of-{right}" for left in SHAPES for right in SHAPES)
_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges, so shapes are not told apart by aliasing


def default_cache_root() -> Path:
    """$WEIGHTFORMER_CACHE, else $XDG_CACHE_HOME/weightformer, else ~/.cache/weightformer."""
    if "WEIGHTFORMER_CACHE" in os.environ:
        return Path(os.environ["WEIGHTFORMER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "weightformer"


def _random_colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    """An RGB colour with every channel drawn uniformly from [low, high)."""
    return (rng.randrange(low, high), rng.randrange(low, high), rng.randrange(low, high))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, colour: tuple) -> None:
    r = size / 2
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        r *= 0.9  # equal area-ish with the circle, so the amount of colour does not give the shape away
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx, cy - r * 1.1), (cx - r * 1.1, cy + r * 0.9), (cx + r * 1.1, cy + r * 0.9)], fill=colour)


def render_example(label: int, image_size: int, rng: random.Random) -> Image.Image:
    """One RGB image of class `label` (an index into CLASS_NAMES), drawn with `rng`."""
    left, right = SHAPES[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    s = image_size * _SUPERSAMPLE
    background = _random_colour(rng, 0, 100)  # dark; shapes are light (150-255), so they always stand out
    image = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(image)
    # Sizes 34-46 % of the image side; the right shape starts strictly to the right of the left one.
    size_left, size_right = (rng.uniform(0.34, 0.46) * s for _ in range(2))
    margin = 0.03 * s
    x_left = rng.uniform(margin + size_left / 2, s - margin - size_right - size_left / 2 - margin)
    x_right = rng.uniform(x_left + (size_left + size_right) / 2 + margin, s - margin - size_right / 2)
    for shape, x, size in ((left, x_left, size_left), (right, x_right, size_right)):
        y = rng.uniform(margin + size / 2, s - margin - size / 2)
        _draw_shape(draw, shape, x, y, size, _random_colour(rng, 150, 256))
    return image.resize((image_size, image_size), Image.Resampling.BOX)


# Size factors that give the three shapes of _draw_shape the same area (circle pi r^2, square 3.24 r^2, triangle
# 2.2 r^2), so that no pixel count or colour histogram tells a "shapes" class.
_EQUAL_AREA = {"circle": 1.0, "square": (math.pi / 3.24) ** 0.5, "triangle": (math.pi / 2.2) ** 0.5}


def render_plain_shape(label: int, image_size: int, rng: random.Random) -> Image.Image:
    """One RGB image of kind "shapes": one large light shape near the centre on a dark background, the shape
    given by the class (circle, square, triangle) and nothing else. Colours (shape 150-255, background 0-70 in
    each channel), size (a circle of 64-70 % of the side, the others of the same area) and a small offset of the
    centre (up to 4 % of the side) are drawn at random, independently of the class. The generation task's
    embedded data: a classifier can tell a model's samples apart by their shape alone, so its judgement measures
    whether the model draws the class's shape.
    """
    s = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (s, s), _random_colour(rng, 0, 70))
    shape = SHAPES[label]
    size = rng.uniform(0.64, 0.70) * s * _EQUAL_AREA[shape]
    cx, cy = (s / 2 + rng.uniform(-0.04, 0.04) * s for _ in range(2))
    if shape == "triangle":
        cy += 0.1 * size / 2  # its extents about the centre: 1.1 r above, 0.9 r below; centre them
    _draw_shape(ImageDraw.Draw(image), shape, cx, cy, size, _random_colour(rng, 150, 256))
    return image.resize((image_size, image_size), Image.Resampling.BOX)


# kind -> (class names, renderer): "shape-pairs" for classification, "shapes" for generation.
KINDS = {"shape-pairs": (CLASS_NAMES, render_example), "shapes": (SHAPES, render_plain_shape)}


def make_synthetic_dataset(
    root: str | Path | None = None,
    seed: int = 0,
    image_size: int = 32,
    train_per_class: int = 1000,
    val_per_class: int = 200,
    kind: str = "shape-pairs",
) -> Path:
    """Write the dataset (if not already there) and return its folder, holding train/ and val/.

    Args:
        root: cache folder holding the datasets; default `default_cache_root()`.
        seed: seed of the generator; the same seed gives the same images.
        image_size: side of the square images in pixels.
        train_per_class / val_per_class: images per class in each split.
        kind: "shape-pairs" (9 classes, "which shape is left of which") or "shapes" (3: circle, square, triangle).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown synthetic dataset kind {kind!r}; choose from {', '.join(KINDS)}.")
    class_names, render = KINDS[kind]
    root = Path(root) if root is not None else default_cache_root()
    prefix = "synthetic" if kind == "shape-pairs" else f"synthetic-{kind}"
    name = f"{prefix}-v{VERSION}-seed{seed}-{image_size}px-{train_per_class}x{val_per_class}"
    path = root / name
    if (path / "val").is_dir():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for split_index, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
            for label, class_name in enumerate(class_names):
                folder = tmp / split / class_name
                folder.mkdir(parents=True)
                # One generator per (split, class): images do not depend on the other classes or the counts.
                rng = random.Random(f"{seed}/{split_index}/{label}")
                for i in range(count):
                    render(label, image_size, rng).save(folder / f"{i:05d}.png")
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same dataset first; theirs is identical
            if not (path / "val").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def dataset_folder(data_dir: str, synthetic: dict) -> Path:
    """`data_dir`, or the embedded dataset (written once, then found in the cache) when it is "synthetic"."""
    return make_synthetic_dataset(**synthetic) if data_dir == "synthetic" else Path(data_dir)
