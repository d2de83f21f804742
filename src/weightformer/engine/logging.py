"""Metrics to JSON lines (and TensorBoard, W&B, MLflow: loggers.py), and progress bars: written by rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .loggers import Tracker

__all__ = ["MetricsLog", "progress_bar"]


class MetricsLog:
    """Appends metrics as JSON lines to <run>/metrics.jsonl, to TensorBoard when it is installed, and to the
    experiment trackers given (`--logger`: the same values, as `<kind>/<key>`)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, trackers: list[Tracker] | None = None) -> None:
        self.enabled = enabled
        self.trackers = (trackers or []) if enabled else []
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
        for tracker in self.trackers:
            tracker.log(kind, step, values)

    def close(self, status: str = "finished") -> None:
        """status: how the run ended, "finished", "preempted" (it will be resumed) or "failed"."""
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.close(status)
        self.trackers = []


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar, or None when disabled (other ranks, --progress false)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)
