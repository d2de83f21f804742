"""Image classification on the training engine: the release's ImageNet recipe and an embedded default.

    from weightformer.tasks.classification import load_config, train
    result = train(load_config("synthetic", epochs=2))   # recipes: configs/*.yaml
"""

from .config import ClassificationConfig, add_config_arguments, config_from_args, list_recipes, load_config
from .evaluate import ClassifierValidation, TopKAccuracy, evaluate_folder, predict
from .synthetic import make_synthetic_dataset
from .task import ClassificationTask, train

__all__ = [
    "ClassificationConfig",
    "ClassificationTask",
    "load_config",
    "list_recipes",
    "add_config_arguments",
    "config_from_args",
    "train",
    "ClassifierValidation",
    "TopKAccuracy",
    "evaluate_folder",
    "predict",
    "make_synthetic_dataset",
]
