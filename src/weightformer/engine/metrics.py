"""Validation metrics that accumulate batch by batch and are reduced over processes by the engine, once.

A metric declares its state with `add_state`: tensors that add up over processes (`reduce="sum"`: counts, sums,
a confusion matrix) or lists that are concatenated over processes (`reduce="cat"`: per-image results that only
the whole set can score, such as COCO detections). A task's `validation_step` calls `update` on each batch; the
engine then calls `reduce_metrics`, which sums every tensor state of every metric in one all-reduce and joins
every list state in one gather, and finally `compute` on the reduced state. No metric talks to other processes
itself, so a task never sums over ranks (the torchmetrics contract, without its per-metric collectives).

Metrics that are expensive to compute from the joined lists (COCOeval) set `compute_on_primary = True`: rank 0
computes and broadcasts the result.
"""

from __future__ import annotations

from typing import Any

import torch

from .distributed import Dist, all_reduce_tensor, broadcast_object, gather_objects

__all__ = ["Metric", "Mean", "reduce_metrics", "compute_metrics"]


class Metric:
    """Base class: declare state in `__init__` with `add_state`, fill it in `update`, read it in `compute`."""

    compute_on_primary = False  # True: only rank 0 computes (from the joined state); the result is broadcast

    def __init__(self) -> None:
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: torch.Tensor | list, reduce: str = "sum") -> None:
        """A piece of state: a float64 tensor summed over processes, or a list concatenated over processes."""
        if reduce not in ("sum", "cat"):
            raise ValueError(f"reduce must be sum or cat, not {reduce!r}.")
        if reduce == "sum" and not isinstance(default, torch.Tensor):
            raise TypeError(f"State {name!r} reduced by sum must be a tensor.")
        if reduce == "cat" and not isinstance(default, list):
            raise TypeError(f"State {name!r} reduced by cat must be a list.")
        self._reductions[name] = reduce
        setattr(self, name, default.double() if reduce == "sum" else list(default))

    def to(self, device: torch.device) -> Metric:
        """Move the tensor states to `device` (the engine does this before the first update)."""
        for name, reduce in self._reductions.items():
            if reduce == "sum":
                setattr(self, name, getattr(self, name).to(device))
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Named values from the (reduced) state."""
        raise NotImplementedError


class Mean(Metric):
    """The mean of values added per sample: `update(values)` with a (B,) tensor; computes {name: mean}."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.add_state("total", torch.zeros(()))
        self.add_state("count", torch.zeros(()))

    def update(self, values: torch.Tensor) -> None:
        self.total += values.detach().double().sum()
        self.count += values.numel()

    def compute(self) -> dict[str, float]:
        return {self.name: (self.total / self.count.clamp(min=1)).item()}


def reduce_metrics(metrics: list[Metric], d: Dist) -> None:
    """Reduce every metric's state over processes in place: one all-reduce for all sums, one gather for all lists."""
    if d.world_size == 1:
        return
    sums = [(m, name) for m in metrics for name, r in m._reductions.items() if r == "sum"]
    if sums:
        flat = torch.cat([getattr(m, name).reshape(-1).to(d.device) for m, name in sums])  # (S,)
        flat = all_reduce_tensor(flat, d)
        offset = 0
        for m, name in sums:
            state = getattr(m, name)
            setattr(m, name, flat[offset: offset + state.numel()].reshape(state.shape).to(state.device))
            offset += state.numel()
    lists = [(m, name) for m in metrics for name, r in m._reductions.items() if r == "cat"]
    if lists:
        gathered = gather_objects([getattr(m, name) for m, name in lists], d)  # rank order
        for i, (m, name) in enumerate(lists):
            setattr(m, name, [item for rank_lists in gathered for item in rank_lists[i]])


def compute_metrics(metrics: list[Metric], d: Dist) -> dict[str, Any]:
    """Every metric's values (after `reduce_metrics`), merged into one dict; rank 0's for primary-only metrics.

    An error in a primary-only computation is raised on every rank (no rank is left waiting)."""
    values: dict[str, Any] = {}
    primary_only: dict[str, Any] | str | None = {}
    for metric in metrics:
        if not metric.compute_on_primary:
            values.update(metric.compute())
        elif d.primary and isinstance(primary_only, dict):
            try:
                primary_only.update(metric.compute())
            except ValueError as error:  # said on every rank below
                primary_only = str(error)
    if any(m.compute_on_primary for m in metrics):
        primary_only = broadcast_object(primary_only, d)
        if isinstance(primary_only, str):
            raise ValueError(primary_only)
        values.update(primary_only)
    return values
