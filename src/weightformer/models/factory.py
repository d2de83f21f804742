"""`create_model` and `list_models`: the WeightFormer registry, on top of timm's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm

from .checkpoint import load_checkpoint
from .weightformer import MODEL_CONFIGS, WeightFormer

__all__ = ["create_model", "list_models"]


def list_models() -> list[str]:
    """Names of the WeightFormer variants, e.g. ["weightformer_base", "weightformer_small", "weightformer_tiny"]."""
    return sorted(MODEL_CONFIGS)


def create_model(
    name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None, **kwargs: Any
) -> WeightFormer:
    """Build a WeightFormer variant by name.

    Args:
        name: one of `list_models()` (an optional ".in1k" tag is accepted).
        pretrained: load the released ImageNet-1K weights from the Hugging Face Hub
            (RuizeHe/weightformer-{t,s,b}), through huggingface_hub's cache.
        checkpoint_path: load weights from a file instead: the release's .pth (state dict under "model"),
            the Hub's .safetensors, or a checkpoint written by this package.
        **kwargs: constructor overrides (num_classes, drop_path_rate, dynamic_blocks, ...).
    """
    if name.split(".")[0] not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(list_models())}.")
    if pretrained and checkpoint_path is not None:
        raise ValueError("Pass either pretrained=True or checkpoint_path, not both.")
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model
