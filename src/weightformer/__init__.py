"""WeightFormer: linear-time global visual modeling without explicit attention (arXiv 2605.01711).

Importing this package registers weightformer_tiny / _small / _base with timm.
"""

from pathlib import Path
from typing import Any

import torch.nn as nn

from .layers import DynamicDWConv2d, DynamicLinear, attention_as_dynamic_mlp, attention_mlp_weights
from .models import (
    CheckpointMismatchError,
    WeightFormer,
    WeightFormerDiT,
    checkpoint_filter_fn,
    create_model,
    dit_checkpoint_filter_fn,
    list_models,
    load_checkpoint,
    load_dit_checkpoint,
    save_pretrained,
)

__version__ = "0.1.0"


def from_pretrained(source: str | Path, task: str | None = None, device: str = "cpu", **kwargs: Any) -> nn.Module:
    """Any task's model, in eval mode, from a Hub folder (or repo id): one written by `weightformer export-weights`
    (classifier, segmenter, detector, WeightFormer-DiT, ...; kwargs override the run's config values), or a
    classifier in timm's or the release's layout (kwargs: constructor arguments). See
    `weightformer.tasks.publish`; `task` refuses a folder of another task in one line."""
    from .tasks.publish import from_pretrained as load  # the tasks load on first use: `import weightformer` stays light

    return load(source, task, device, **kwargs)


__all__ = [
    "WeightFormer",
    "create_model",
    "list_models",
    "save_pretrained",
    "from_pretrained",
    "load_checkpoint",
    "checkpoint_filter_fn",
    "CheckpointMismatchError",
    "WeightFormerDiT",
    "dit_checkpoint_filter_fn",
    "load_dit_checkpoint",
    "DynamicLinear",
    "DynamicDWConv2d",
    "attention_as_dynamic_mlp",
    "attention_mlp_weights",
]
