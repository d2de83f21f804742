"""Classification runs: the engine's values plus data, model, augmentation and loss (SPEC §6 by default).

The dataclass defaults are the release's ImageNet recipe for WeightFormer-T; the recipes in `configs/`
(`tiny`, `small`, `base`, `synthetic`) state whole recipes, and every value is a command-line flag
(`weightformer.tasks.load_config("classification", "tiny")`; the registry finds the folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine.config import EngineConfig

__all__ = ["ClassificationConfig"]


@dataclass
class ClassificationConfig(EngineConfig):
    """Everything a classification run depends on. Saved, resolved, with every checkpoint."""

    # -- data -------------------------------------------------------------------------------------------------
    data_dir: str | None = None  # ImageNet layout: <data_dir>/<train_split>/<class>/*; "synthetic": built-in
    train_split: str = "train"
    val_split: str = "val"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_synthetic_dataset arguments (root, seed, ...)

    # -- model ------------------------------------------------------------------------------------------------
    model: str = "weightformer_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides (embed_dim, depth, ...)
    img_size: int = 224
    drop_path: float = 0.0
    initial_checkpoint: str | None = None  # start from these weights (e.g. the release's, to fine-tune)

    # -- augmentation and loss --------------------------------------------------------------------------------
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    hflip: float = 0.5
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    interpolation: str = "bicubic"
    crop_pct: float = 224 / 256  # evaluation: resize to size / crop_pct, centre crop
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1

