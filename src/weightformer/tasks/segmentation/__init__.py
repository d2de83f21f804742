"""Semantic segmentation on the training engine: UperNet on WeightFormer (or DeiT), ADE20K and an embedded default.

    from weightformer.tasks import load_config
    from weightformer.tasks.segmentation import train
    result = train(load_config("segmentation", "synthetic", epochs=2))   # recipes: configs/segmentation/*.yaml
"""

from .config import SegmentationConfig
from .evaluate import confusion_matrix, evaluate, infer, scores
from .synthetic import make_segmentation_dataset
from .task import SegmentationTask, train

__all__ = ["SegmentationConfig", "SegmentationTask", "train", "evaluate", "infer", "confusion_matrix", "scores",
           "make_segmentation_dataset"]
