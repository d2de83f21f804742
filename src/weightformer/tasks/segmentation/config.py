"""Semantic-segmentation runs: the engine's values plus data, backbone, head and augmentation (ADE20K's recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine.config import EngineConfig, free, setting

__all__ = ["SegmentationConfig"]


@dataclass
class SegmentationConfig(EngineConfig):
    """Everything a segmentation run depends on. Saved, resolved, with every checkpoint."""

    # -- data: ADE20K's layout, <data_dir>/images/<split>/ and <data_dir>/annotations/<split>/ ------------------
    data_dir: str | None = None  # "synthetic": the built-in shapes dataset
    train_split: str = "training"
    val_split: str = "validation"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_segmentation_dataset arguments
    num_classes: int = setting(150, ge=1)
    reduce_zero_label: bool = True  # ADE20K: id 0 ("other") is ignored, 1..150 become 0..149
    class_names: list[str] | None = None

    # -- model: UperNet on the simple feature pyramid of an isotropic backbone -------------------------------
    backbone: str = "weightformer_small"  # a WeightFormer name, or a timm deit_* for the attention baseline
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    out_channels: int = setting(256, ge=1)  # width of the pyramid's maps
    head_channels: int = setting(512, ge=1)  # width of UperNet
    drop_path: float = setting(0.1, ge=0, lt=1)
    initial_checkpoint: str | None = None  # a classification checkpoint for the backbone (ours or the release's)

    # -- augmentation and inference -------------------------------------------------------------------------
    scale: list[int] = setting(factory=lambda: [2048, 512], length=2, ge=1)  # images are resized to fit this
    # training: random rescale of `scale` by a factor in this range
    ratio_range: list[float] = setting(factory=lambda: [0.5, 2.0], length=2, gt=0, increasing=True)
    crop_size: int = setting(512, ge=1)
    hflip: float = setting(0.5, ge=0, le=1)
    inference: str = free("whole", choices=("whole", "slide"))  # the whole image, or windows of crop_size
    slide_stride: int = free(341, ge=1)

