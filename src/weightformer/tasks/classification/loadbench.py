"""Data loading alone: images per second of a classification source through the training transform and loader.

`loader_throughput` builds the dataset, the engine's sampler and loader exactly as a training run does (same
transform, same (index, seed) items, same collate) and times one pass over `samples` images, worker start-up
included (the engine starts its workers afresh every epoch), with one torch thread in the loading process.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from ...engine.data import EpochSampler, make_loader
from .data import train_transform
from .sources import DataSource
from .task import ClassificationTask

__all__ = ["loader_throughput"]


def loader_throughput(cfg: Any, split: str, workers: int, samples: int | None = None) -> dict[str, Any]:
    """{source, split, workers, images, seconds, images_per_second} of one pass of `cfg`'s data through the
    training transform (a ClassificationConfig: data_dir, img_size, augmentation, batch_size, seed)."""
    source = DataSource.from_config(cfg)
    dataset = source.open(split, train_transform(cfg))
    task = ClassificationTask(cfg)
    task.mixup = None  # the batch as the loader gives it; Mixup runs in the training step, not in the loader
    sampler = EpochSampler(len(dataset), shuffle=True, seed=cfg.seed, batch_size=cfg.batch_size,
                           order=getattr(dataset, "epoch_order", None))
    # One torch thread, as in the DataLoader's workers: with workers=0 the transform's small tensor ops would
    # otherwise run on every core's OpenMP thread, and time their contention rather than the loading.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        loader = make_loader(dataset, sampler, cfg.batch_size, workers, functools.partial(task.collate, train=True))
        images = skipped = 0
        for collated in loader:
            images, skipped = images + collated.size, skipped + len(collated.skipped)
            if samples is not None and images >= samples:
                break
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {"source": str(source), "split": split, "workers": workers, "images": images, "skipped": skipped,
            "seconds": seconds, "images_per_second": images / max(seconds, 1e-9)}
