"""Image-folder data: ImageNet layout, timm transforms, corrupt files skipped, resumable deterministic order.

Two things here are not stock torchvision / timm:

- A sample's augmentation is seeded by (run seed, epoch, sample index), not by the worker that happens to load
  it, so the same epoch gives the same batches whatever the number of workers, and a run resumed mid-epoch
  continues with exactly the batches the interrupted run would have seen.
- An unreadable image does not raise: it is reported (with its path) and dropped from its batch, and the
  training loop counts it.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Sampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "FolderDataset",
    "EpochSampler",
    "check_splits",
    "eval_transform",
    "train_transform",
    "collate_skip_corrupt",
    "make_loader",
]


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


class FolderDataset(ImageFolder):
    """ImageFolder whose items may carry their own seed and whose unreadable images come back as None.

    `dataset[(index, seed)]` applies the transform under `seed`; `dataset[index]` under the ambient RNGs.
    An image that cannot be decoded yields `(None, path)` instead of raising, so one bad file cannot end an
    epoch; `collate_skip_corrupt` drops it and reports it.
    """

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, Any]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, target = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... on bad files
            return None, f"{path} ({type(error).__name__}: {error})"
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with _seeded(seed):
                    image = self.transform(image)
        return image, target


def collate_skip_corrupt(batch: list[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable samples; return (images (B, 3, H, W), targets (B,), descriptions of skipped files)."""
    good = [(image, target) for image, target in batch if image is not None]
    skipped = [description for image, description in batch if image is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in good])
    targets = torch.tensor([target for _, target in good], dtype=torch.long)
    return images, targets, skipped


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())


def check_splits(data_dir: str | Path, train_split: str | None, val_split: str | None) -> list[str]:
    """Check the folder layout before anything is built; return the class names (sorted folder names).

    Raises FileNotFoundError for a missing folder and ValueError for an empty split, a class folder without
    images, or train and val splits whose classes differ, each naming the folder and what was expected.
    """
    data_dir = Path(data_dir)
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
    """The release's evaluation transform (SPEC §4): resize to floor(size / crop_pct), centre crop, normalise."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std))


def train_transform(cfg) -> Any:
    """timm's training transform from a TrainConfig: random resized crop, flip, RandAugment, erasing."""
    return create_transform(
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
    )


class EpochSampler(Sampler):
    """Deterministic per-epoch order, split across processes, resumable from any batch.

    Epoch e shuffles with seed (seed, e); process r of w takes every w-th index from r. For training
    (`drop_remainder=True`) the order is first cut to a multiple of w so that every process runs the same
    number of steps; for evaluation nothing is cut and nothing is padded, so every image is counted once.
    Yields `(index, sample_seed)` for FolderDataset.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_remainder: bool = True) -> None:
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.drop_remainder = rank, world_size, drop_remainder
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, and skip its first `start` samples of this process (to resume mid-epoch)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.drop_remainder:
            order = order[: len(order) // self.world_size * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._indices()[self.start :]:
            yield index, (self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + index

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


def make_loader(dataset: FolderDataset, sampler: EpochSampler, batch_size: int, workers: int, train: bool,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_corrupt,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=False,  # the sampler changes per epoch; workers are cheap next to an epoch
        # Workers' base seed from a private generator, not the global one: creating a loader must not move the
        # global RNG (drop-path draws from it), or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(0),
    )


def warn_skipped(skipped: list[str]) -> None:
    for description in skipped:
        warnings.warn(f"Skipped unreadable image {description}", stacklevel=2)
