"""WeightFormer models, registered with timm on import."""

from .checkpoint import CheckpointMismatchError, load_checkpoint, read_state_dict
from .factory import create_model, create_model_from_checkpoint, list_models
from .weightformer import MODEL_CONFIGS, Block, WeightFormer, checkpoint_filter_fn, dynamic_block_indices

__all__ = [
    "WeightFormer",
    "Block",
    "MODEL_CONFIGS",
    "create_model",
    "create_model_from_checkpoint",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "checkpoint_filter_fn",
    "dynamic_block_indices",
    "CheckpointMismatchError",
]
