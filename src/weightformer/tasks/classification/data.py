"""Image-folder data for classification: ImageNet layout, timm transforms, corrupt files skipped.

An item may carry its own seed (the engine's EpochSampler hands out (index, seed) pairs), so an image's
augmentation does not depend on the worker that loads it. An unreadable image does not raise: it comes back as
`Unreadable(path and reason)`, and the engine drops it from its batch and counts it.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ...engine.data import Unreadable

__all__ = ["FolderDataset", "IndexedImages", "open_image", "transformed", "check_splits", "eval_transform",
           "train_transform", "collate_images"]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with python, numpy and torch RNGs seeded by `seed`, restoring the caller's states after."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def open_image(source: str | Path | bytes, description: str) -> Image.Image | Unreadable:
    """An RGB image from a file or from its encoded bytes, or `Unreadable(description and reason)`."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... on bad files
        return Unreadable(f"{description} ({type(error).__name__}: {error})")


def transformed(image: Image.Image, transform: Any, seed: int | None) -> Any:
    """`transform(image)`, under `seed` when given (an item's own seed), else under the ambient RNGs."""
    if transform is None:
        return image
    if seed is None:
        return transform(image)
    with _seeded(seed):
        return transform(image)


class IndexedImages(Dataset):
    """Base of the datasets that read sample i's stored image with `original(i)`: the transform (seeded by the
    engine's per-sample seed) and the label `targets[i]` are applied here, once for every storage format."""

    transform: Any
    targets: Sequence[int]

    def original(self, index: int) -> Image.Image | Unreadable:
        raise NotImplementedError

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, int] | Unreadable:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.original(index)
        if isinstance(image, Unreadable):
            return image
        return transformed(image, self.transform, seed), self.targets[index]


class FolderDataset(ImageFolder):
    """ImageFolder whose items may carry their own seed and whose unreadable images come back as `Unreadable`.

    `dataset[(index, seed)]` applies the transform under `seed`; `dataset[index]` under the ambient RNGs.
    An image that cannot be decoded yields `Unreadable(path and reason)` instead of raising, so one bad file
    cannot end an epoch.
    """

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, Any] | Unreadable:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, target = self.samples[index]
        image = open_image(path, path)
        if isinstance(image, Unreadable):
            return image
        return transformed(image, self.transform, seed), target

    def original(self, index: int) -> Image.Image | Unreadable:
        """Sample `index`'s image as stored (for pictures of predictions)."""
        return open_image(self.samples[index][0], self.samples[index][0])


def collate_images(samples: list[tuple[torch.Tensor, int]]) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """Stack readable samples: ((images (B, 3, H, W), targets (B,)), B)."""
    images = torch.stack([image for image, _ in samples])
    targets = torch.tensor([target for _, target in samples], dtype=torch.long)
    return (images, targets), len(samples)


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())


def check_splits(data_dir: str | Path, train_split: str | None, val_split: str | None) -> list[str]:
    """Check the folder layout before anything is built; return the class names (sorted folder names).

    Raises FileNotFoundError for a missing folder and ValueError for an empty split, a class folder without
    images, or train and val splits whose classes differ, each naming the folder and what was expected.
    """
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise ValueError(f"Dataset folder {data_dir} is a file: expected a folder holding <split>/<class>/<image>.")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Dataset folder {data_dir} does not exist.")
    classes_by_split = {}
    for split in (s for s in (train_split, val_split) if s is not None):
        split_dir = data_dir / split
        if not split_dir.is_dir():
            found = ", ".join(sorted(p.name for p in data_dir.iterdir() if p.is_dir())) or "nothing"
            raise FileNotFoundError(
                f"No {split!r} split: expected the folder {split_dir} (layout <data_dir>/{split}/<class>/<image>), "
                f"found {found} in {data_dir}."
            )
        classes = _list_classes(split_dir)
        if not classes:
            raise ValueError(f"The {split!r} split {split_dir} is empty: it needs one sub-folder per class.")
        empty = [c for c in classes if not any(p.suffix.lower() in IMG_EXTENSIONS for p in (split_dir / c).iterdir())]
        if empty:
            raise ValueError(f"Class folders without images in {split_dir}: {', '.join(empty[:10])}.")
        classes_by_split[split] = classes
    if len(classes_by_split) == 2:
        train_classes, val_classes = classes_by_split.values()
        if train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise ValueError(
                f"The train and val splits of {data_dir} have different classes: only in {train_split}: "
                f"{only_train[:10] or 'none'}; only in {val_split}: {only_val[:10] or 'none'}."
            )
    return next(iter(classes_by_split.values()))


def eval_transform(img_size: int, crop_pct: float = 224 / 256, interpolation: str = "bicubic",
                   mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
    """The release's evaluation transform (its data/build.py): resize to floor(size / crop_pct), centre crop,
    normalise."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std))


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """RandAugment's posterize as Pillow < 13 computed it: 0 bits kept gives a black image.

    timm's "PosterizeIncreasing" level maps magnitudes of ~9.5 and more to 0 bits (reachable with the recipes'
    `rand-m9-mstd0.5-inc1`), which Pillow 13 refuses with a ValueError that would end a run mid-epoch.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: Any) -> Any:
    """Swap `_posterize` into every RandAugment/AutoAugment posterize op of a (nested) torchvision Compose."""
    for t in getattr(transform, "transforms", None) or []:
        ops = getattr(t, "ops", None)  # timm RandAugment / AugMixAugment
        if ops is None and hasattr(t, "policy"):  # timm AutoAugment: a list of sub-policies
            ops = [op for sub in t.policy for op in sub]
        for op in ops or []:
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = _posterize
        _patch_posterize(t)
    return transform


def train_transform(cfg) -> Any:
    """timm's training transform from a ClassificationConfig: random resized crop, flip, RandAugment, erasing."""
    return _patch_posterize(create_transform(
        cfg.img_size,
        is_training=True,
        scale=tuple(cfg.scale),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment,
        interpolation=cfg.interpolation,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    ))
