"""Class-conditional generation with WeightFormer-DiT on the training engine (pixels or VAE latents).

    from weightformer.tasks import load_config
    from weightformer.tasks.generation import train
    result = train(load_config("generation", "synthetic", epochs=2))   # recipes: configs/generation/*.yaml
"""

from .task import GenerationConfig, GenerationTask, checkpoint_model, train

__all__ = ["GenerationConfig", "GenerationTask", "checkpoint_model", "train"]
