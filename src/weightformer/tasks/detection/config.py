"""Detection runs: the engine's values plus COCO data, the Mask R-CNN on the backbone's pyramid, and augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine import config as engine_config
from ...engine.config import EngineConfig

__all__ = ["DetectionConfig"]


@dataclass
class DetectionConfig(EngineConfig):
    """Everything a detection / instance-segmentation run depends on. Saved, resolved, with every checkpoint."""

    # -- data: COCO's layout, <data_dir>/annotations/instances_<split>.json and <data_dir>/<split>/ ------------
    data_dir: str | None = None  # "synthetic": the built-in shapes dataset
    train_split: str = "train2017"
    val_split: str | None = "val2017"  # null: no evaluation during training
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_detection_dataset arguments
    num_classes: int = 80  # must match the annotation file's categories

    # -- model: torchvision's Mask R-CNN, ViTDet-style heads, on the simple feature pyramid -------------------
    backbone: str = "weightformer_tiny"  # a WeightFormer name, or a timm deit_* for the attention baseline
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    out_channels: int = 256  # width of the pyramid's maps
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one per level, strides 4..64
    rpn_convs: int = 2
    head_channels: int = 256
    box_convs: int = 4
    box_fc: int = 1024
    box_fcs: int = 1
    mask_convs: int = 4
    rcnn: dict[str, Any] = field(default_factory=dict)  # further torchvision MaskRCNN arguments (proposals, ...)
    drop_path: float = 0.1
    initial_checkpoint: str | None = None  # a classification checkpoint for the backbone (ours or the release's)

    # -- augmentation and sizes ----------------------------------------------------------------------------
    # Multi-scale training: the shorter side is a random choice of min_size, the longer at most max_size;
    # evaluation uses the last min_size. With scale_jitter (large-scale jitter, ViTDet's recipe) images are
    # rescaled by crop_size x U(scale_jitter) on their longer side and cropped or padded to crop_size squared,
    # and evaluation resizes the longer side to crop_size: min_size and max_size are then not used.
    min_size: list[int] = field(default_factory=lambda: [800])
    max_size: int = 1333
    scale_jitter: list[float] | None = None
    crop_size: int = 1024
    hflip: float = 0.5

    # -- reporting (free) ----------------------------------------------------------------------------------
    draw_threshold: float = engine_config.free(0.5)  # score from which predictions are drawn in the report

