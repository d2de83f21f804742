"""Semantic-segmentation data in ADE20K's layout: images/<split>/*.jpg|png with annotations/<split>/*.png.

Label maps hold one class id per pixel. With `reduce_zero_label` (ADE20K: 0 is "other"), 0 becomes the ignore
index and every other id drops by one, so 150 classes are 0..149. A pair whose label map holds an id outside
the classes, or whose files cannot be read, is skipped with its reason and counted; an image without a label map
is counted and reported at start-up.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...engine.data import Unreadable

__all__ = ["SegmentationFolder", "find_pairs", "IGNORE_INDEX"]

IGNORE_INDEX = 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def find_pairs(data_dir: str | Path, split: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, label map) pairs of a split, sorted, and the images that have no label map.

    Raises FileNotFoundError / ValueError in one line when the layout is not there or the split is empty.
    """
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise ValueError(f"Dataset folder {data_dir} is a file: expected images/<split>/ and annotations/<split>/.")
    images, labels = data_dir / "images" / split, data_dir / "annotations" / split
    for folder in (images, labels):
        if not folder.is_dir():
            raise FileNotFoundError(f"No folder {folder}: a segmentation dataset holds images/{split}/ and "
                                    f"annotations/{split}/ (ADE20K's layout).")
    label_by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() == ".png"}
    pairs, unlabelled = [], []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
        if image.stem in label_by_stem:
            pairs.append((image, label_by_stem[image.stem]))
        else:
            unlabelled.append(str(image))
    if not pairs:
        raise ValueError(f"The {split!r} split of {data_dir} has no image with a label map "
                         f"({len(unlabelled)} images without one).")
    return pairs, unlabelled


class SegmentationFolder(torch.utils.data.Dataset):
    """(image (3, h, w) normalised, label (h, w) long) pairs with ADE20K-style augmentation.

    Training: resize so the image fits `scale` x a random ratio from `ratio_range` (aspect kept), random crop of
    `crop_size` (padded with the ignore index when smaller), horizontal flip. Evaluation: resize to fit `scale`;
    the label map keeps its original size (metrics are computed there, as ADE20K's benchmark does).
    """

    def __init__(self, pairs: list[tuple[Path, Path]], num_classes: int, train: bool, scale: tuple[int, int],
                 crop_size: int, ratio_range: tuple[float, float] = (0.5, 2.0), reduce_zero_label: bool = False,
                 hflip: float = 0.5) -> None:
        self.pairs, self.num_classes, self.train = pairs, num_classes, train
        self.scale, self.crop_size, self.ratio_range = scale, crop_size, ratio_range
        self.reduce_zero_label, self.hflip = reduce_zero_label, hflip
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
        self.std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, index: int) -> tuple[Image.Image, np.ndarray] | Unreadable:
        image_path, label_path = self.pairs[index]
        try:
            with Image.open(image_path) as image, Image.open(label_path) as label:
                image, label = image.convert("RGB"), np.array(label)
        except (OSError, SyntaxError, ValueError) as error:
            return Unreadable(f"{image_path} ({type(error).__name__}: {error})")
        if label.ndim != 2 or label.shape != (image.height, image.width):
            return Unreadable(f"{label_path} (label map {label.shape} does not match image {image.height}x"
                              f"{image.width})")
        label = label.astype(np.int64)
        if self.reduce_zero_label:
            label = np.where(label == 0, IGNORE_INDEX, label - 1)
        bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            return Unreadable(f"{label_path} (class ids {sorted(set(label[bad].tolist()))[:5]} outside 0.."
                              f"{self.num_classes - 1})")
        return image, label

    def _fit(self, image: Image.Image, label: np.ndarray | None, ratio: float):
        long_side, short_side = max(self.scale) * ratio, min(self.scale) * ratio
        factor = min(long_side / max(image.size), short_side / min(image.size))
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(size, Image.BILINEAR)
        if label is not None:
            label = np.array(Image.fromarray(label.astype(np.uint8)).resize(size, Image.NEAREST), dtype=np.int64)
        return image, label

    def _crop(self, image: torch.Tensor, label: torch.Tensor, rng: random.Random):
        c = self.crop_size
        pad_h, pad_w = max(0, c - image.shape[1]), max(0, c - image.shape[2])
        image = F.pad(image, (0, pad_w, 0, pad_h))
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top, left = rng.randint(0, image.shape[1] - c), rng.randint(0, image.shape[2] - c)
        return image[:, top: top + c, left: left + c], label[top: top + c, left: left + c]

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, seed = item if isinstance(item, tuple) else (item, None)
        read = self._read(index)
        if isinstance(read, Unreadable):
            return read
        image, label = read
        rng = random.Random(seed if seed is not None else index)
        if self.train:
            image, label = self._fit(image, label, rng.uniform(*self.ratio_range))
        else:
            image, _ = self._fit(image, None, 1.0)
        x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - self.mean) / self.std  # (3, h, w)
        y = torch.from_numpy(label)  # (h, w)
        if self.train:
            x, y = self._crop(x, y, rng)
            if rng.random() < self.hflip:
                x, y = x.flip(-1), y.flip(-1)
        return x, y
