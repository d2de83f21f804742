"""Sampling at scale: samples written to shard files as they are drawn, a resumed run skipping finished shards, and
the shards merged into one npz in ADM's layout, streaming.

Shard s holds batches s*K .. s*K + K - 1 (K = `shard_batches`) of the run's fixed-size batches, so a shard's
samples depend on the seed and batch size only, like every batch's (sample.py): rank r of W draws shards r, r + W,
..., and a run interrupted with W processes can be finished with any other number. A shard is written atomically
(a temporary file renamed), so a file under its name is complete; `DIR/shards/run.json` records the settings, and
a run with other settings is refused instead of mixing two sets of samples. A process holds at most one shard of
images (`draw_shards`), and the merge reads one batch at a time (`merge_shards`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .images import NpzImages, NpzWriter

__all__ = ["ShardPlan", "SHARD_BATCHES", "GRID_CLASSES", "check_resumable", "write_manifest", "finished_shards",
           "draw_shards", "merge_shards", "remove_shards"]

SHARD_BATCHES = 8  # 512 samples at the default batch of 64: 100 MB of 256² images held at most
GRID_CLASSES = 32  # rows of samples.png: the first 32 classes drawn (ImageNet's 1000 rows would be no picture)
MANIFEST = "run.json"


@dataclass(frozen=True)
class ShardPlan:
    """Which samples each shard file holds."""

    num_samples: int
    batch_size: int
    shard_batches: int = SHARD_BATCHES

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_batches / self.shard_batches)

    def batches(self, shard: int) -> range:
        return range(shard * self.shard_batches, min((shard + 1) * self.shard_batches, self.num_batches))

    def indices(self, shard: int) -> range:
        size = self.shard_batches * self.batch_size
        return range(shard * size, min((shard + 1) * size, self.num_samples))

    def path(self, directory: Path, shard: int) -> Path:
        return directory / f"shard{shard:06d}.npz"


def check_resumable(directory: Path, settings: dict[str, Any]) -> None:
    """Refuse, in one line, a shard folder left by a run with other settings (its shards are other samples)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return
    try:
        stored = json.loads(manifest.read_text())
    except (ValueError, OSError):
        raise ValueError(f"{manifest} is not readable JSON: remove {directory} to start afresh.") from None
    settings = json.loads(json.dumps(settings))  # tuples as lists, as stored
    diff = [k for k in sorted(set(stored) | set(settings)) if stored.get(k) != settings.get(k)]
    if diff:
        changes = ", ".join(f"{k} {stored.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
        raise ValueError(f"{directory} holds the shards of an unfinished run with other settings ({changes}): rerun "
                         "with its settings to finish it, or remove that folder.")


def write_manifest(directory: Path, settings: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    if not manifest.exists():
        tmp = directory / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, manifest)


def _shard_done(path: Path, count: int) -> bool:
    """Whether `path` is a complete shard of `count` samples (a damaged or truncated file is not: it is redrawn)."""
    try:
        shard = NpzImages(path)
        labels = shard.labels()
    except (ValueError, OSError):
        return False
    return len(shard) == count and labels is not None and len(labels) == count


def finished_shards(directory: Path, plan: ShardPlan) -> set[int]:
    return {s for s in range(plan.num_shards) if _shard_done(plan.path(directory, s), len(plan.indices(s)))}


def draw_shards(shards: Iterable[int], plan: ShardPlan, draw_batch: Callable[[int], np.ndarray], labels: np.ndarray,
                directory: Path) -> int:
    """Draw and write each of `shards`: its batches go into one buffer, written when full, so at most one shard
    of images is held. draw_batch(b) -> uint8 (n, H, W, 3), the samples of batch b. Returns the batches drawn."""
    drawn = 0
    for shard in shards:
        indices, buffer = plan.indices(shard), None
        for b in plan.batches(shard):
            images = draw_batch(b)
            if buffer is None:
                buffer = np.empty((len(indices), *images.shape[1:]), np.uint8)
            at = b * plan.batch_size - indices.start
            buffer[at:at + len(images)] = images
            del images  # not alive while the next batch is drawn: one shard and one batch at a time
            drawn += 1
        with NpzWriter(plan.path(directory, shard), len(buffer), buffer.shape[1:]) as out:
            out.write(buffer)
            out.put("arr_1", labels[indices.start:indices.stop])
        del buffer
    return drawn


class _GridPicker:
    """The first `per_class` samples of each of the first GRID_CLASSES classes drawn, picked while streaming into
    one tile array (classes, per_class, H, W, 3): no copy of them is made to draw the grid."""

    def __init__(self, labels: np.ndarray, per_class: int = 8):
        self.labels, self.per_class = labels, per_class
        self.rows = {int(c): i for i, c in enumerate(np.unique(labels)[:GRID_CLASSES])}
        self.counts = np.zeros(len(self.rows), dtype=np.int64)
        self.tiles: np.ndarray | None = None

    def add(self, start: int, images: np.ndarray) -> None:
        if self.tiles is None:
            self.tiles = np.zeros((len(self.rows), self.per_class, *images.shape[1:]), np.uint8)
        for i, image in enumerate(images):
            row = self.rows.get(int(self.labels[start + i]))
            if row is not None and self.counts[row] < self.per_class:
                self.tiles[row, self.counts[row]] = image
                self.counts[row] += 1

    def grid(self) -> np.ndarray:
        return self.tiles[:, : self.counts.max()]


def merge_shards(directory: Path, plan: ShardPlan, labels: np.ndarray, npz: Path, png: Path | None,
                 write_tiles: Callable[[np.ndarray, Path], None]) -> None:
    """Stream the shards, in order, into `npz` (arr_0 uint8 NHWC, arr_1 labels: ADM's layout) and draw the grid:
    write_tiles(tiles (rows, columns, H, W, 3), png)."""
    item = NpzImages(plan.path(directory, 0)).shape[1:]
    picker = _GridPicker(labels)
    with NpzWriter(npz, plan.num_samples, item) as out:
        for s in range(plan.num_shards):
            start = plan.indices(s).start
            for batch in NpzImages(plan.path(directory, s)).batches(plan.batch_size):
                out.write(batch)
                picker.add(start, batch)
                start += len(batch)
        out.put("arr_1", labels)
    if png is not None:
        write_tiles(picker.grid(), png)


def remove_shards(directory: Path, plan: ShardPlan) -> None:
    """Remove the shards, their temporaries and the manifest, then the folder if nothing else is in it."""
    for s in range(plan.num_shards):
        plan.path(directory, s).unlink(missing_ok=True)
    for stray in directory.glob(".shard*.npz.tmp"):  # left by a process killed while writing (SIGKILL)
        stray.unlink(missing_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    if not any(directory.iterdir()):
        directory.rmdir()
