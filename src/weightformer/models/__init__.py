"""WeightFormer models, registered with timm on import."""

from .checkpoint import CheckpointMismatchError, load_checkpoint, read_state_dict
from .compilation import compile_blocks
from .dit import DIT_CONFIGS, WeightFormerDiT, dit_checkpoint_filter_fn, load_dit_checkpoint
from .factory import create_model, create_model_from_checkpoint, list_models
from .grad_checkpointing import set_grad_checkpointing
from .hub import from_pretrained, save_pretrained
from .weightformer import MODEL_CONFIGS, Block, WeightFormer, checkpoint_filter_fn, dynamic_block_indices

__all__ = [
    "WeightFormer",
    "Block",
    "MODEL_CONFIGS",
    "create_model",
    "create_model_from_checkpoint",
    "save_pretrained",
    "from_pretrained",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "checkpoint_filter_fn",
    "dynamic_block_indices",
    "CheckpointMismatchError",
    "WeightFormerDiT",
    "DIT_CONFIGS",
    "dit_checkpoint_filter_fn",
    "load_dit_checkpoint",
    "set_grad_checkpointing",
    "compile_blocks",
]
