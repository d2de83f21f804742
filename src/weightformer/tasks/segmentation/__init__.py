"""Semantic segmentation on the training engine: UperNet on WeightFormer (or DeiT), ADE20K and an embedded default.

    from weightformer.tasks.segmentation import load_config, train
    result = train(load_config("synthetic", epochs=2))   # recipes: configs/segmentation/*.yaml
"""

from .config import SegmentationConfig, add_config_arguments, config_from_args, load_config
from .evaluate import ConfusionMetric, confusion_matrix, infer, scores
from .synthetic import make_segmentation_dataset
from .task import SegmentationTask, train

__all__ = ["SegmentationConfig", "SegmentationTask", "load_config", "add_config_arguments", "config_from_args",
           "train", "ConfusionMetric", "infer", "confusion_matrix", "scores", "make_segmentation_dataset"]
