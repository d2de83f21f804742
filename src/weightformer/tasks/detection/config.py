"""Detection runs: the engine's values plus COCO data, the Mask R-CNN on the backbone's pyramid, and augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine.config import EngineConfig, free, setting

__all__ = ["DetectionConfig"]


@dataclass
class DetectionConfig(EngineConfig):
    """Everything a detection / instance-segmentation run depends on. Saved, resolved, with every checkpoint."""

    # -- data: COCO's layout, <data_dir>/annotations/instances_<split>.json and <data_dir>/<split>/ ------------
    data_dir: str | None = None  # "synthetic": the built-in shapes dataset
    train_split: str = "train2017"
    val_split: str | None = "val2017"  # null: no evaluation during training
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_detection_dataset arguments
    num_classes: int = setting(80, ge=1)  # must match the annotation file's categories
    # Instance masks: null (auto) trains and scores masks when the training annotations have segmentations and
    # boxes only when none has (a file where only some have one is refused: choose); true: masks, annotations
    # without one left out; false: boxes only (Faster R-CNN: no mask head, no segm_* metrics).
    masks: bool | None = None

    # -- model: torchvision's Mask R-CNN, ViTDet-style heads, on the simple feature pyramid -------------------
    backbone: str = "weightformer_tiny"  # a WeightFormer name, or a timm deit_* for the attention baseline
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    out_channels: int = setting(256, ge=1)  # width of the pyramid's maps
    # One anchor size per pyramid level, strides 4..64 (the model checks the count against its levels).
    anchor_sizes: list[int] = setting(factory=lambda: [32, 64, 128, 256, 512], nonempty=True, ge=1)
    rpn_convs: int = setting(2, ge=0)
    head_channels: int = setting(256, ge=1)
    box_convs: int = setting(4, ge=0)  # the FPN recipe's box head has none
    box_fc: int = setting(1024, ge=1)
    box_fcs: int = setting(1, ge=1)  # the box predictor reads the last fc's box_fc features
    mask_convs: int = setting(4, ge=1)  # the mask predictor reads head_channels-wide maps
    rcnn: dict[str, Any] = field(default_factory=dict)  # further torchvision MaskRCNN arguments (proposals, ...)
    drop_path: float = setting(0.1, ge=0, lt=1)
    initial_checkpoint: str | None = None  # a classification checkpoint for the backbone (ours or the release's)

    # -- augmentation and sizes ----------------------------------------------------------------------------
    # Multi-scale training: the shorter side is a random choice of min_size, the longer at most max_size;
    # evaluation uses the last min_size. With scale_jitter (large-scale jitter, ViTDet's recipe) images are
    # rescaled by crop_size x U(scale_jitter) on their longer side and cropped or padded to crop_size squared,
    # and evaluation resizes the longer side to crop_size: min_size and max_size are then not used.
    min_size: list[int] = setting(factory=lambda: [800], nonempty=True, ge=1)
    max_size: int = setting(1333, ge=1)
    scale_jitter: list[float] | None = setting(None, length=2, gt=0)  # [low, high] (the task checks low <= high)
    crop_size: int = setting(1024, ge=1)
    hflip: float = setting(0.5, ge=0, le=1)
    # Aspect-ratio grouped batches (torchvision's references): each global batch holds images of one aspect-ratio
    # bin, so the model pads less. k >= 0: torchvision's create_aspect_ratio_groups, bin edges 2^linspace(-1, 1,
    # 2k + 1) of width / height, 2k + 2 groups (0: portrait / landscape); -1: off (LSJ's crops are all square).
    aspect_ratio_group_factor: int = setting(-1, ge=-1)

    # -- reporting (free) ----------------------------------------------------------------------------------
    draw_threshold: float = free(0.5, ge=0, le=1)  # score from which predictions are drawn in the report

