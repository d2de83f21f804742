"""Training and evaluation of WeightFormer classifiers: the release's ImageNet recipe and an embedded default.

    from weightformer.train import load_config, train
    result = train(load_config("synthetic", epochs=2))   # recipes: configs/*.yaml
"""

from .config import TrainConfig, add_config_arguments, config_from_args, list_recipes, load_config
from .engine import train
from .evaluate import evaluate, evaluate_folder, predict
from .synthetic import make_synthetic_dataset

__all__ = [
    "TrainConfig",
    "load_config",
    "list_recipes",
    "add_config_arguments",
    "config_from_args",
    "train",
    "evaluate",
    "evaluate_folder",
    "predict",
    "make_synthetic_dataset",
]
