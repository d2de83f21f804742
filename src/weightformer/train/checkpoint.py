"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a plain dict of tensors and Python containers (loadable with `weights_only=True`):
model, optimizer, scheduler, grad scaler and EMA states, the position in training (epoch, batches done in
that epoch, global step), the RNG states of python / numpy / torch (and CUDA), the resolved config and the
class names. `model` is the bare state dict, so `weightformer.load_checkpoint` and `weightformer eval` read it
directly.

Layout of a run's folder: checkpoints/step-00001234.pth (numbered, pruned to the newest `keep`),
checkpoints/last.pth and checkpoints/best.pth (hard links to numbered files' contents, replaced atomically).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "save_atomic", "CheckpointDir"]


def rng_state() -> dict[str, Any]:
    """The process's RNG states, as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename: readers see the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _link_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, target)


class CheckpointDir:
    """A run's checkpoints folder: numbered checkpoints plus last.pth and best.pth."""

    _NUMBERED = re.compile(r"^step-(\d+)\.pth$")

    def __init__(self, path: str | Path, keep: int = 2) -> None:
        self.path = Path(path)
        self.keep = max(1, keep)

    @property
    def last(self) -> Path:
        return self.path / "last.pth"

    @property
    def best(self) -> Path:
        return self.path / "best.pth"

    def numbered(self) -> list[Path]:
        """Numbered checkpoints, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := self._NUMBERED.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        if self.last.is_file():
            return self.last
        numbered = self.numbered()
        return numbered[-1] if numbered else None

    def save(self, state: dict[str, Any], step: int, is_best: bool = False) -> Path:
        """Write step-<step>.pth, point last.pth (and best.pth when `is_best`) at it, prune old ones."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / f"step-{step:08d}.pth"
        save_atomic(state, path)
        _link_atomic(path, self.last)
        if is_best:
            _link_atomic(path, self.best)
        for old in self.numbered()[: -self.keep]:
            old.unlink()  # best.pth and last.pth are links of their own and survive
        return path
