"""Class-conditional generation with WeightFormer-DiT on the training engine (pixel space; latents next).

    from weightformer.tasks.generation import load_config, train
    result = train(load_config("synthetic", epochs=2))   # recipes: configs/generation/*.yaml
"""

from .task import GenerationConfig, GenerationTask, add_config_arguments, config_from_args, load_config, train

__all__ = ["GenerationConfig", "GenerationTask", "load_config", "add_config_arguments", "config_from_args", "train"]
