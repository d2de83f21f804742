"""Semantic-segmentation runs: the engine's values plus data, backbone, head and augmentation (ADE20K's recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine import config as engine_config
from ...engine.config import EngineConfig

__all__ = ["SegmentationConfig"]


@dataclass
class SegmentationConfig(EngineConfig):
    """Everything a segmentation run depends on. Saved, resolved, with every checkpoint."""

    # -- data: ADE20K's layout, <data_dir>/images/<split>/ and <data_dir>/annotations/<split>/ ------------------
    data_dir: str | None = None  # "synthetic": the built-in shapes dataset
    train_split: str = "training"
    val_split: str = "validation"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_segmentation_dataset arguments
    num_classes: int = 150
    reduce_zero_label: bool = True  # ADE20K: id 0 ("other") is ignored, 1..150 become 0..149
    class_names: list[str] | None = None

    # -- model: UperNet on the simple feature pyramid of an isotropic backbone -------------------------------
    backbone: str = "weightformer_small"  # a WeightFormer name, or a timm deit_* for the attention baseline
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    out_channels: int = 256  # width of the pyramid's maps
    head_channels: int = 512  # width of UperNet
    drop_path: float = 0.1
    initial_checkpoint: str | None = None  # a classification checkpoint for the backbone (ours or the release's)

    # -- augmentation and inference -------------------------------------------------------------------------
    scale: list[int] = field(default_factory=lambda: [2048, 512])  # images are resized to fit this
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # training: random rescale of `scale`
    crop_size: int = 512
    hflip: float = 0.5
    inference: str = engine_config.free("whole")  # "whole" image, or "slide" windows of crop_size (free)
    slide_stride: int = engine_config.free(341)

