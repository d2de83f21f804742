"""The embedded detection dataset: overlapping shapes on noisy backgrounds, as COCO instance annotations.

Each image holds 2 to 5 shapes (circle, square, triangle) of random colours, sizes and positions on a background
of random colour with noise, drawn in order, so that later shapes occlude earlier ones. A placement that would
leave an earlier shape less than half visible is drawn again, so every annotated object can be seen. Each object
is annotated with its visible part: the box around it, and its mask as a polygon when nothing covers it or as
RLE (pycocotools' compressed run-lengths) when something does, so both of COCO's mask formats are exercised.

Written once, deterministically by seed, exactly in COCO's layout, atomically, to the cache folder:
`annotations/instances_{train2017,val2017}.json` and `{train2017,val2017}/<id>.png`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..classification.synthetic import default_cache_root

__all__ = ["CLASS_NAMES", "VERSION", "render_scene", "make_detection_dataset"]

VERSION = 2
CLASS_NAMES = ("circle", "square", "triangle")  # category ids 1, 2, 3
MIN_VISIBLE = 0.5  # the least visible fraction of an occluded shape


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The shape as a polygon (a circle as a 32-gon), so the drawing and the annotation are the same region."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    return [(cx + r * math.cos(2 * math.pi * k / 32), cy + r * math.sin(2 * math.pi * k / 32)) for k in range(32)]


def _fill(points: list[tuple[float, float]], size: int) -> np.ndarray:
    """(size, size) bool: the polygon rasterised by pycocotools, as COCOeval and the loader will see it (PIL's
    polygon fill differs along the outline by up to a pixel)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([[c for p in points for c in p]], size, size)
    return mask_utils.decode(rle)[..., 0].astype(bool)


def _place(size: int, rng: random.Random, objects: list[dict]) -> tuple[int, list, np.ndarray]:
    """A new shape (class, outline, mask) that leaves each earlier shape at least MIN_VISIBLE of its area visible."""
    for _ in range(50):
        cls = rng.randint(1, len(CLASS_NAMES))
        r = rng.uniform(0.08, 0.2) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        points = _outline(CLASS_NAMES[cls - 1], cx, cy, r)
        mask = _fill(points, size)
        if all((o["mask"] & ~mask).sum() >= MIN_VISIBLE * o["area"] for o in objects):
            return cls, points, mask
    return 0, [], np.zeros((size, size), bool)  # no room left: no shape


def render_scene(size: int, rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """One RGB image of side `size` and its objects: [{category_id, polygon [x1, y1, ...] or None, mask (H, W)}].

    `polygon` is the outline when nothing covers the shape, else None; `mask` is always the visible part.
    """
    base = tuple(rng.randint(0, 120) for _ in range(3))
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-20, 21, (size, size, 3))
    pixels = np.clip(np.array(base)[None, None] + noise, 0, 255).astype(np.uint8)  # (size, size, 3)
    objects: list[dict] = []
    for _ in range(rng.randint(2, 5)):
        cls, points, mask = _place(size, rng, objects)
        if not cls:
            continue
        pixels[mask] = [rng.randint(100, 255) for _ in range(3)]
        for o in objects:
            if (o["mask"] & mask).any():
                o["mask"], o["polygon"] = o["mask"] & ~mask, None  # occluded: only RLE describes it
        objects.append(dict(category_id=cls, polygon=[round(c, 2) for p in points for c in p], mask=mask,
                            area=mask.sum()))
    return Image.fromarray(pixels), objects


def _annotation(obj: dict, image_id: int, ann_id: int) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    if obj["polygon"] is not None:
        segmentation = [obj["polygon"]]
    else:
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return dict(id=ann_id, image_id=image_id, category_id=obj["category_id"], segmentation=segmentation,
                area=float(mask_utils.area(rle)), bbox=[x, y, w, h], iscrowd=0)


def _write_split(folder: Path, split: str, count: int, size: int, rng: random.Random, first_id: int) -> None:
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        image_id = first_id + i
        image, objects = render_scene(size, rng)
        name = f"{image_id:012d}.png"
        image.save(folder / split / name)
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
        for obj in objects:
            annotations.append(_annotation(obj, image_id, len(annotations) + 1))
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(CLASS_NAMES)]
    coco = dict(info=dict(description=f"weightformer synthetic shapes v{VERSION}"), images=images,
                annotations=annotations, categories=categories)
    (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def make_detection_dataset(root: str | Path | None = None, seed: int = 0, image_size: int = 128,
                           train_images: int = 1500, val_images: int = 200) -> Path:
    """Write the dataset (if not already there) and return its folder (COCO's layout)."""
    root = Path(root) if root is not None else default_cache_root()
    name = f"detection-v{VERSION}-seed{seed}-{image_size}px-{train_images}x{val_images}"
    path = root / name
    done = path / "annotations" / "instances_val2017.json"
    if done.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        (tmp / "annotations").mkdir()
        _write_split(tmp, "train2017", train_images, image_size, random.Random(f"{seed}/0"), 1)
        _write_split(tmp, "val2017", val_images, image_size, random.Random(f"{seed}/1"), train_images + 1)
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same dataset first; theirs is identical
            if not done.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
