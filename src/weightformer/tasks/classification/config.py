"""Classification runs: the engine's values plus data, model, augmentation and loss (the release's recipe by default).

The dataclass defaults are the release's ImageNet recipe for WeightFormer-T; the recipes in `configs/`
(`tiny`, `small`, `base`, `synthetic`) state whole recipes, and every value is a command-line flag
(`weightformer.tasks.load_config("classification", "tiny")`; the registry finds the folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine.config import EngineConfig, setting

__all__ = ["ClassificationConfig"]


@dataclass
class ClassificationConfig(EngineConfig):
    """Everything a classification run depends on. Saved, resolved, with every checkpoint."""

    # -- data -------------------------------------------------------------------------------------------------
    # A folder in ImageNet layout (<data_dir>/<train_split>/<class>/*), "synthetic" (built in), "wds:DIR" (tar
    # shards of `weightformer data pack`), "hf:DIR" (a local Hugging Face dataset) or "hf-stream:DIR" (streamed)
    data_dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_synthetic_dataset arguments (root, seed, ...)
    # wds: "global" shuffles all samples (the folder's order: the same batches as from the folder); "shards"
    # reads shards in a random order, samples shuffled within windows of shard_window shards (fewer open files)
    shard_order: str = setting("global", choices=("global", "shards"))
    shard_window: int = setting(4, ge=1)
    image_column: str = "image"  # hf, hf-stream: the image column and the (ClassLabel) label column
    label_column: str = "label"
    stream_buffer: int = setting(1000, ge=1)  # hf-stream: records in the shuffle buffer

    # -- model ------------------------------------------------------------------------------------------------
    model: str = "weightformer_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides (embed_dim, depth, ...)
    img_size: int = setting(224, ge=1)
    drop_path: float = setting(0.0, ge=0, lt=1)
    initial_checkpoint: str | None = None  # start from these weights (e.g. the release's, to fine-tune)

    # -- augmentation and loss (timm's names and meanings) ----------------------------------------------------
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # any timm auto-augment string; None: off
    color_jitter: float = setting(0.4, ge=0)
    reprob: float = setting(0.25, ge=0, le=1)  # random erasing: probability, fill mode, count
    remode: str = setting("pixel", choices=("pixel", "rand", "const"))
    recount: int = setting(1, ge=1)
    hflip: float = setting(0.5, ge=0, le=1)
    scale: list[float] = setting(factory=lambda: [0.08, 1.0], length=2, gt=0, le=1, increasing=True)  # crop areas
    # PIL's resampling filters (not timm's "random": the evaluation transform needs one filter)
    interpolation: str = setting("bicubic", choices=("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos"))
    crop_pct: float = setting(224 / 256, gt=0, le=1)  # evaluation: resize to size / crop_pct, centre crop
    mixup: float = setting(0.8, ge=0)  # Mixup's and CutMix's beta-distribution alphas; 0: off
    cutmix: float = setting(1.0, ge=0)
    mixup_prob: float = setting(1.0, ge=0, le=1)
    mixup_switch_prob: float = setting(0.5, ge=0, le=1)
    mixup_mode: str = setting("batch", choices=("batch", "pair", "elem"))
    smoothing: float = setting(0.1, ge=0, lt=1)

