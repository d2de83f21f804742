"""WeightFormer: linear-time global visual modeling without explicit attention (arXiv 2605.01711).

Importing this package registers weightformer_tiny / _small / _base with timm.
"""

from .layers import DynamicDWConv2d, DynamicLinear, attention_as_dynamic_mlp, attention_mlp_weights
from .models import (
    CheckpointMismatchError,
    WeightFormer,
    WeightFormerDiT,
    checkpoint_filter_fn,
    create_model,
    dit_checkpoint_filter_fn,
    from_pretrained,
    list_models,
    load_checkpoint,
    load_dit_checkpoint,
    save_pretrained,
)

__version__ = "0.1.0"

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
