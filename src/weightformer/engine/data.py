"""Data plumbing every task shares: a resumable sampler, unreadable samples dropped and counted, the loader.

- The order of an epoch depends on (seed, epoch) only, and a sample's augmentation on (seed, epoch, index), not
  on the worker that loads it; so the same epoch gives the same batches whatever the number of workers, and a
  run resumed mid-epoch continues with exactly the batches the interrupted run would have seen.
- Positions in an epoch are counted in samples of the global order, not in batches of one process: a run
  resumed with another number of processes (or another batch size) continues at the same sample.
- A dataset returns `Unreadable(description)` for a sample it cannot read instead of raising; the collate
  step drops it and reports it, and the engine counts it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["Unreadable", "Collated", "EpochSampler", "make_loader", "warn_skipped"]


class Unreadable(NamedTuple):
    """What a dataset returns in place of a sample it cannot read (a corrupt image, a missing file)."""

    description: str  # the path and the reason, for the log


class Collated(NamedTuple):
    """A loader's batch: the task's batch, how many samples it holds, and what was left out and why."""

    batch: Any  # None when no sample was usable
    size: int
    skipped: list[str]  # descriptions of unreadable samples
    dropped: int  # readable samples the task's collate left out (e.g. to even a batch for Mixup)


class _SkipUnreadable:
    """Collate wrapper: separate Unreadable markers from samples, then call the task's collate on the rest.

    The task's collate returns (batch, size); `size` below the readable count means it dropped samples.
    """

    def __init__(self, collate: Callable[[list[Any]], tuple[Any, int]]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Collated:
        good = [s for s in samples if not isinstance(s, Unreadable)]
        skipped = [s.description for s in samples if isinstance(s, Unreadable)]
        if not good:
            return Collated(None, 0, skipped, 0)
        batch, size = self.collate(good)
        if size == 0:
            batch = None
        return Collated(batch, size, skipped, len(good) - size)


class EpochSampler(Sampler):
    """Deterministic per-epoch order, split across processes, resumable from any sample.

    Epoch e shuffles with seed (seed, e). `set_epoch(e, start)` skips the first `start` samples of that global
    order. For training (`batch_size` given) the rest is cut to a multiple of world_size x batch_size, so that
    every process runs the same number of full steps; for evaluation nothing is cut and nothing is padded, so
    every sample is counted once. Process r of w takes every w-th sample from r. Yields `(index, sample_seed)`.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None) -> None:
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, and skip its first `start` samples (counted in the global order, all processes)."""
        self.epoch, self.start = epoch, start

    def steps(self, start: int = 0) -> int:
        """Full global steps in an epoch from sample `start` on (training samplers)."""
        return max(0, self.num_samples - start) // (self.world_size * (self.batch_size or 1))

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        order = order[self.start :]
        if self.batch_size is not None:
            order = order[: self.steps(self.start) * self.world_size * self.batch_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._indices():
            yield index, (self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + index

    def __len__(self) -> int:
        return len(self._indices())


def make_loader(dataset: Dataset, sampler: EpochSampler, batch_size: int, workers: int,
                collate: Callable[[list[Any]], tuple[Any, int]], pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding `Collated` batches in the sampler's order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_SkipUnreadable(collate),
        pin_memory=pin_memory,
        drop_last=False,  # a training sampler already holds whole steps only
        persistent_workers=False,  # the sampler changes per epoch; workers are cheap next to an epoch
        # Workers' base seed from a private generator, not the global one: creating a loader must not move the
        # global RNG (drop-path draws from it), or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(0),
    )


def warn_skipped(skipped: list[str]) -> None:
    for description in skipped:
        warnings.warn(f"Skipped unreadable sample {description}", stacklevel=2)
