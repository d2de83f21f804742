"""Data plumbing every task shares: a resumable sampler, unreadable samples dropped and counted, the loader.

- The order of an epoch depends on (seed, epoch) only, and a sample's augmentation on (seed, epoch, index), not
  on the worker that loads it; so the same epoch gives the same batches whatever the number of workers, and a
  run resumed mid-epoch continues with exactly the batches the interrupted run would have seen.
- Positions in an epoch are counted in samples of the global order, not in batches of one process: a run
  resumed with another number of processes (or another batch size) continues at the same sample.
- A dataset returns `Unreadable(description)` for a sample it cannot read instead of raising; the collate
  step drops it and reports it, and the engine counts it.
- Optionally samples come in groups (a task's per-sample group ids, e.g. aspect-ratio bins for detection, as
  torchvision's GroupedBatchSampler): then every optimiser step's global batch is drawn from one group, and the
  order stays a function of (seed, epoch), so the guarantees above hold as they are.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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

    With `groups` (one group id per sample; training only) the shuffled order is regrouped as torchvision's
    GroupedBatchSampler does: walking through it, each group gathers its samples until it holds one global batch
    (world_size x batch_size), which then goes next into the epoch's order. So every global batch, and each
    process's share of it, comes from one group, in an order that depends on (seed, epoch) only. What a group
    holds at the end of the walk (fewer than a global batch: `left_over()` samples in all, the same number every
    epoch, other samples each epoch) is left out of that epoch, as the ungrouped order leaves out its last
    incomplete step. The grouped order depends on the global batch: a run resumed mid-epoch with another one
    continues at the same position of a regrouped epoch (exact again from the next epoch).
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None, groups: Sequence[int] | None = None) -> None:
        if groups is not None and (batch_size is None or len(groups) != num_samples):
            raise ValueError(f"groups needs a batch_size and one group id per sample ({num_samples}), got "
                             f"{len(groups)} ids and batch_size {batch_size}.")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.groups = list(groups) if groups is not None else None
        self.epoch, self.start = 0, 0
        self._grouped: tuple[int, list[int]] | None = None  # (epoch, its grouped order): built once per epoch
        self._usable = self.num_samples  # samples in whole grouped batches: the same every epoch (see usable)
        if self.groups is not None:
            chunk = self._global_batch()
            self._usable = sum(n // chunk for n in Counter(self.groups).values()) * chunk

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, and skip its first `start` samples (counted in the global order, all processes)."""
        self.epoch, self.start = epoch, start

    def _global_batch(self) -> int:
        return self.world_size * (self.batch_size or 1)

    def usable(self) -> int:
        """Samples of an epoch's order before the cut to whole steps: all, or those in whole grouped batches (each
        group fills n // global batch of them, whatever the shuffle)."""
        return self._usable

    def left_over(self) -> int:
        """Samples that grouping leaves out of every epoch (0 without groups)."""
        return self.num_samples - self.usable()

    def steps(self, start: int = 0) -> int:
        """Full global steps in an epoch from sample `start` on (training samplers)."""
        return max(0, self.usable() - start) // self._global_batch()

    def _order(self) -> list[int]:
        """The epoch's global order, before the cut to whole steps and the split over processes."""
        if self.groups is not None:
            if self._grouped is None or self._grouped[0] != self.epoch:  # len() and iter() both need it
                self._grouped = (self.epoch, self._regroup(self._shuffled()))
            return self._grouped[1]
        return self._shuffled()

    def _shuffled(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def _regroup(self, order: list[int]) -> list[int]:
        """`order` as whole global batches of one group each, in the order the groups fill them."""
        chunk, pending, grouped = self._global_batch(), {}, []
        for index in order:
            bucket = pending.setdefault(self.groups[index], [])
            bucket.append(index)
            if len(bucket) == chunk:
                grouped += bucket
                bucket.clear()
        return grouped

    def _indices(self) -> list[int]:
        order = self._order()[self.start :]
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
