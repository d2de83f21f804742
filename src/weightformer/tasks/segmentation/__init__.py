"""Semantic segmentation on the training engine: UperNet on WeightFormer (or DeiT), ADE20K and an embedded default.

    from weightformer.tasks import load_config
    from weightformer.tasks.segmentation import train
    result = train(load_config("segmentation", "synthetic", epochs=2))   # recipes: configs/segmentation/*.yaml
"""

from .config import SegmentationConfig
from .evaluate import ConfusionMetric, confusion_matrix, infer, scores
from .synthetic import make_segmentation_dataset
from .task import SegmentationTask, train

__all__ = ["SegmentationConfig", "SegmentationTask", "train", "ConfusionMetric", "infer", "confusion_matrix",
           "scores", "make_segmentation_dataset"]
