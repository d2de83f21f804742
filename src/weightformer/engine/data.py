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
- A dataset may fix its own epoch order (`epoch_order(seed, epoch)`, a permutation: tar shards read a few at a
  time), or be a `StreamDataset` read in passes (Hugging Face streaming): the sampler's positions apply to both.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

__all__ = ["Unreadable", "Collated", "EpochSampler", "StreamDataset", "make_loader", "warn_skipped"]


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

    Epoch e shuffles with seed (seed, e), uniformly, or with `order(seed, e)` when given (a dataset's own
    permutation, e.g. one that keeps reads within a few tar shards at a time). `set_epoch(e, start)` skips the
    first `start` samples of that global order. For training (`batch_size` given) the rest is cut to a multiple
    of world_size x batch_size, so that every process runs the same number of full steps; for evaluation nothing
    is cut and nothing is padded, so every sample is counted once. Process r of w takes every w-th sample from r.
    Yields `(index, sample_seed)`.

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
                 batch_size: int | None = None, groups: Sequence[int] | None = None,
                 order: Callable[[int, int], Sequence[int]] | None = None) -> None:
        if groups is not None and (batch_size is None or len(groups) != num_samples):
            raise ValueError(f"groups needs a batch_size and one group id per sample ({num_samples}), got "
                             f"{len(groups)} ids and batch_size {batch_size}.")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.groups = list(groups) if groups is not None else None
        self.order_fn = order
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

    def positions(self) -> range:
        """This process's places in the epoch's global order: every w-th from start + rank, whole steps only."""
        end = self.usable()
        if self.batch_size is not None:
            end = self.start + self.steps(self.start) * self._global_batch()
        return range(self.start + self.rank, end, self.world_size)

    def order(self) -> Sequence[int]:
        """The epoch's global order (the sample index at each place), before the cut to whole steps."""
        if self.groups is not None:
            if self._grouped is None or self._grouped[0] != self.epoch:  # len() and iter() both need it
                self._grouped = (self.epoch, self._regroup(self._shuffled()))
            return self._grouped[1]
        return self._shuffled()

    def _shuffled(self) -> Sequence[int]:
        if not self.shuffle:
            return range(self.num_samples)
        if self.order_fn is not None:
            return self.order_fn(self.seed, self.epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def _regroup(self, order: Sequence[int]) -> list[int]:
        """`order` as whole global batches of one group each, in the order the groups fill them."""
        chunk, pending, grouped = self._global_batch(), {}, []
        for index in order:
            bucket = pending.setdefault(self.groups[index], [])
            bucket.append(index)
            if len(bucket) == chunk:
                grouped += bucket
                bucket.clear()
        return grouped

    def sample_seed(self, index: int) -> int:
        """The augmentation seed of sample `index` in this epoch: the same whichever process or worker loads it."""
        return (self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + index

    def _indices(self) -> list[int]:
        order = self.order()
        return [order[p] for p in self.positions()]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._indices():
            yield index, self.sample_seed(index)

    def __len__(self) -> int:
        return len(self.positions())


class StreamDataset(IterableDataset):
    """A dataset read in passes, in an order the source fixes itself (Hugging Face streaming, say).

    A subclass gives `__len__` (the records of one pass), `records(shuffle_seed)` (one pass, in order, as cheap
    undecoded records; `shuffle_seed` None: the source's own order) and `load(record, seed)` (the sample, or
    `Unreadable`). `make_loader` reads a pass in every process and data worker, and each keeps its own places of
    the sampler's order: the epoch's global order is the stream's, so positions, resumption and the split across
    processes are the EpochSampler's, exact whenever a pass with the same seed gives the same records. The price:
    every reader goes through the whole stream (decoding only its share), and a resumed epoch reads its first
    `start` records again to pass over them.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def records(self, shuffle_seed: int | None) -> Iterable[Any]:
        raise NotImplementedError

    def load(self, record: Any, seed: int) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:  # a stream is read through make_loader, which deals it out
        raise TypeError(f"{type(self).__name__} is read through engine.data.make_loader with an EpochSampler.")


class _StreamShare(IterableDataset):
    """One process's share of a StreamDataset's pass, dealt to the DataLoader's workers by whole batches.

    The DataLoader asks its workers for batches in turn (worker k of K makes batches k, k + K, ...), so each
    worker keeps the samples of its batches and the loader's output is in the sampler's order.
    """

    def __init__(self, stream: StreamDataset, sampler: EpochSampler, batch_size: int) -> None:
        self.stream, self.sampler, self.batch_size = stream, sampler, batch_size

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        places, sampler = self.sampler.positions(), self.sampler
        shuffle_seed = sampler.seed * 1_000_003 + sampler.epoch if sampler.shuffle else None
        mine = {p for i, p in enumerate(places) if (i // self.batch_size) % workers == worker}
        seen = 0
        if mine:
            for position, record in enumerate(self.stream.records(shuffle_seed)):
                if position in mine:
                    seen += 1
                    yield self.stream.load(record, sampler.sample_seed(position))
                    if seen == len(mine):
                        break
        for position in sorted(mine)[seen:]:  # a stream shorter than its length: every rank still ends together
            yield Unreadable(f"stream position {position} (the stream ended before its stated length "
                             f"{len(self.stream)})")


def make_loader(dataset: Dataset, sampler: EpochSampler, batch_size: int, workers: int,
                collate: Callable[[list[Any]], tuple[Any, int]], pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding `Collated` batches in the sampler's order (a StreamDataset's too)."""
    stream = isinstance(dataset, StreamDataset)
    if stream and sampler.groups is not None:  # a stream's places are its own order: it cannot be regrouped
        raise ValueError("A StreamDataset cannot be read in groups (its order is the stream's).")
    return DataLoader(
        _StreamShare(dataset, sampler, batch_size) if stream else dataset,
        batch_size=batch_size,
        sampler=None if stream else sampler,
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
