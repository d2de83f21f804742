"""Reading checkpoints (the release's .pth, the Hub's safetensors, ours) and loading them with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .weightformer import checkpoint_filter_fn

__all__ = ["read_state_dict", "load_checkpoint", "CheckpointMismatchError", "HUB_FILENAME"]

HUB_FILENAME = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely: safetensors, or a torch pickle with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle holding more than tensors and plain containers, or not a checkpoint
        raise ValueError(
            f"Could not read {path} as a weights-only checkpoint ({type(error).__name__}: {error}). "
            "Only tensors and plain containers are loaded, never arbitrary pickled objects."
        ) from error


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


def load_checkpoint(model: nn.Module, source: str | Path | dict[str, Any], strict: bool = True) -> nn.Module:
    """Load a checkpoint file (or an in-memory state dict) into `model`, translating the release's names.

    Raises `CheckpointMismatchError` naming the missing, unexpected and wrongly shaped keys when the
    checkpoint belongs to another architecture or size; the model is left untouched in that case.
    """
    state_dict = source if isinstance(source, dict) else read_state_dict(source)
    state_dict = checkpoint_filter_fn(state_dict, model)
    found = _find_mismatches(model, state_dict)
    if found["wrong shape"] or (strict and (found["missing"] or found["unexpected"])):
        problems = [
            f"{len(keys)} {title}: " + ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
            for title, keys in found.items()
            if keys
        ]
        origin = "the given state dict" if isinstance(source, dict) else str(source)
        raise CheckpointMismatchError(
            f"Checkpoint {origin} does not fit this {type(model).__name__}: "
            + "; ".join(problems)
            + ". Is it for another variant (width, depth, dynamic-block placement, number of classes)?"
        )
    model.load_state_dict(state_dict, strict=strict)
    return model
