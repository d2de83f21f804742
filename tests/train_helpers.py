"""Shared fixtures of the training tests: a tiny generated dataset and a tiny recipe."""

from __future__ import annotations

from pathlib import Path

from weightformer.tasks import load_config
from weightformer.tasks.classification import make_synthetic_dataset


def tiny_dataset(root: Path) -> Path:
    """9 classes, 4 train / 2 val images each, 16x16 px."""
    return make_synthetic_dataset(root, seed=0, image_size=16, train_per_class=4, val_per_class=2)


def tiny_config(data_dir: Path, output_dir: Path, **overrides):
    """A 3-block WeightFormer (one dynamic block) on 16x16 images: steps take milliseconds."""
    values = dict(
        data_dir=str(data_dir), output_dir=str(output_dir), model_kwargs=dict(embed_dim=16, depth=3, patch_size=4),
        img_size=16, epochs=1, warmup_epochs=0, batch_size=4, lr=3e-3, min_lr=3e-3, workers=0, progress=False,
        tensorboard=False, deterministic=True, log_interval=1, crop_pct=1.0, scale=[0.5, 1.0],
    )
    values.update(overrides)
    return load_config("classification", "synthetic", **values)
