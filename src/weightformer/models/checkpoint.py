"""Reading checkpoints (the release's .pth, the Hub's safetensors, ours) and loading them with clear errors."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .weightformer import checkpoint_filter_fn

__all__ = ["read_state_dict", "load_checkpoint", "CheckpointMismatchError", "HUB_FILENAME"]

HUB_FILENAME = "model.safetensors"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely: safetensors, or a torch pickle with `weights_only=True`.

    Raises FileNotFoundError for a missing file and ValueError, in one line naming the file, for anything that
    is not a checkpoint: an empty file, random or truncated bytes, a pickle of arbitrary objects, a file that
    holds something other than a dict.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file.")
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint.")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict: not a checkpoint.")
    return state


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}).") from None


def _read_torch(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if magic != _ZIP_MAGIC:
            raise ValueError(f"{path} is not a checkpoint (neither a PyTorch file nor safetensors).") from None
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(f"{path} holds pickled Python objects{what} besides tensors and plain containers; only "
                         "weights are loaded (weights_only), never arbitrary objects.") from None
    except Exception as error:  # EOFError, KeyError, RuntimeError from the zip reader, ...: not a torch file
        if magic == _ZIP_MAGIC:
            raise ValueError(f"{path} is a damaged or truncated PyTorch file ({type(error).__name__}).") from None
        raise ValueError(f"{path} is not a checkpoint (neither a PyTorch file nor safetensors).") from None


def _find_mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    expected = model.state_dict()
    return {
        "missing": [k for k in expected if k not in state_dict],
        "unexpected": [k for k in state_dict if k not in expected],
        "wrong shape": [
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
        ],
    }


def load_checkpoint(model: nn.Module, source: str | Path | dict[str, Any], strict: bool = True,
                    origin: str | Path | None = None, translate: bool = True) -> nn.Module:
    """Load a checkpoint file (or an in-memory state dict) into `model`, translating the release's names.

    `origin` names an in-memory state dict's file in error messages. `translate=False` loads a state dict of
    this package as it is, into any module (a detector, a segmenter): no release names to map.

    Raises `CheckpointMismatchError` naming the missing, unexpected and wrongly shaped keys when the
    checkpoint belongs to another architecture or size; the model is left untouched in that case.
    """
    state_dict = source if isinstance(source, dict) else read_state_dict(source)
    if translate:
        state_dict = checkpoint_filter_fn(state_dict, model)
    found = _find_mismatches(model, state_dict)
    if found["wrong shape"] or (strict and (found["missing"] or found["unexpected"])):
        problems = [
            f"{len(keys)} {title}: " + ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
            for title, keys in found.items()
            if keys
        ]
        origin = origin or ("the given state dict" if isinstance(source, dict) else source)
        raise CheckpointMismatchError(
            f"Checkpoint {origin} does not fit this {type(model).__name__}: "
            + "; ".join(problems)
            + ". Is it for another variant (width, depth, dynamic-block placement, number of classes)?"
        )
    model.load_state_dict(state_dict, strict=strict)
    return model
