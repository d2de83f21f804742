"""Detection and instance segmentation on the training engine: Mask R-CNN on WeightFormer (or DeiT), COCO-format
data, COCOeval metrics, and an embedded default.

    from weightformer.tasks import load_config
    from weightformer.tasks.detection import train
    result = train(load_config("detection", "synthetic", epochs=2))   # recipes: configs/detection/*.yaml
"""

from .config import DetectionConfig
from .data import CocoDetection, CocoSplit, read_coco
from .evaluate import CocoMetric, coco_metrics, format_metrics, to_coco_results
from .synthetic import make_detection_dataset
from .task import DetectionTask, build_detector, checkpoint_model, train

__all__ = ["DetectionConfig", "DetectionTask", "train", "build_detector", "checkpoint_model", "read_coco", "CocoSplit",
           "CocoDetection", "CocoMetric", "coco_metrics", "to_coco_results", "format_metrics", "make_detection_dataset"]
