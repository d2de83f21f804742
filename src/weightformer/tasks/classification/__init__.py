"""Image classification on the training engine: the release's ImageNet recipe and an embedded default.

    from weightformer.tasks import load_config
    from weightformer.tasks.classification import train
    result = train(load_config("classification", "synthetic", epochs=2))   # recipes: configs/*.yaml
"""

from .config import ClassificationConfig
from .evaluate import ClassifierValidation, TopKAccuracy, evaluate_folder, load_classifier, predict
from .synthetic import make_synthetic_dataset
from .task import ClassificationTask, build_classifier, checkpoint_model, train

__all__ = [
    "ClassificationConfig",
    "ClassificationTask",
    "build_classifier",
    "checkpoint_model",
    "train",
    "ClassifierValidation",
    "TopKAccuracy",
    "evaluate_folder",
    "load_classifier",
    "predict",
    "make_synthetic_dataset",
]
