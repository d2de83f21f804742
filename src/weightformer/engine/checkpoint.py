"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a plain dict of tensors and Python containers (loadable with `weights_only=True`):
model, optimizer, grad scaler and EMA states; the position in training (epoch, samples done in that epoch,
global step) with the world size and global batch that reached it; the best validation value so far and the
counts of skipped and dropped samples; every process's RNG states of python / numpy / torch (and CUDA); the
resolved config, the task's name and its extras (class names, ...). No scheduler state is saved: the learning
rate is a function of the position and is recomputed from it on resumption. `model` is the bare state dict, so
`weightformer.load_checkpoint` and `weightformer eval` read it directly.

Layout of a run's folder: checkpoints/step-00001234.pth (numbered, pruned to the newest `keep`),
checkpoints/last.pth and checkpoints/best.pth (hard links to numbered files' contents, or copies where the file
system has no hard links; replaced atomically).

Durability: a file is written to a temporary name, fsynced, renamed into place, and then the folder itself is
fsynced, so that after a power cut the new name is there too. Temporary files left by a process that died
mid-write are removed the next time the folder is written to.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "save_atomic", "CheckpointDir", "is_training_checkpoint",
           "read_training_checkpoint"]


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


_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not fsync folders; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, rename, fsync the folder: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# errno values of file systems without hard links (FAT, some network and FUSE mounts, object-store mounts).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES}


def _link_atomic(source: Path, target: Path) -> None:
    """Point `target` at `source`'s contents: a hard link where possible, else a copy; replaced atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


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

    def clean_temporary(self) -> list[Path]:
        """Remove temporary files that a process killed mid-write left behind; return what was removed."""
        if not self.path.is_dir():
            return []
        stale = [p for p in self.path.iterdir() if _TEMPORARY.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def save(self, state: dict[str, Any], step: int, is_best: bool = False) -> Path:
        """Write step-<step>.pth, point last.pth (and best.pth when `is_best`) at it, prune old ones."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.clean_temporary()
        path = self.path / f"step-{step:08d}.pth"
        save_atomic(state, path)
        _link_atomic(path, self.last)
        if is_best:
            _link_atomic(path, self.best)
        others = [p for p in self.numbered() if p != path]  # oldest first; a rewound run may have later ones
        for old in others[: max(0, len(others) - (self.keep - 1))]:
            old.unlink()  # best.pth and last.pth are links (or copies) of their own and survive
        return path


_TRAINING_KEYS = ("model", "optimizer", "epoch", "config")


def is_training_checkpoint(state: dict[str, Any]) -> bool:
    """Whether a file's contents are a checkpoint this engine wrote (not bare weights, not the release's files)."""
    return all(k in state for k in _TRAINING_KEYS) and isinstance(state["config"], dict)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint this engine wrote, read safely; a one-line ValueError for any other file."""
    from ..models import read_state_dict

    state = read_state_dict(path)
    missing = [k for k in _TRAINING_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint of this package (it has no {', '.join(missing)}): "
                         "to start from its weights, pass it as initial_checkpoint instead of resume.")
    return state
