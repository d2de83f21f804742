"""Judging a generation run by a classifier trained on its real images (no download, no Inception).

A small WeightFormer classifier is trained on the run's own folder with the classification task; its pre-logits
give the feature space of a Fréchet distance and its predictions say whether a guided sample shows the class it
was conditioned on. Three numbers frame the result: the real-vs-real floor (train images vs val images), the
trained model's samples, and an untrained model's samples (its initialisation, same sampler and seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..loader import load_run_model
from .images import load_images
from .metrics import classifier_scorer, frechet_distance, gaussian_stats
from .sample import generate, guided_channels, make_sampler, sample_labels

__all__ = ["train_judge", "judge_run"]

JUDGE_MODEL_KWARGS = dict(embed_dim=32, depth=3, patch_size=2)


def train_judge(data_dir: Path, image_size: int, output_dir: Path, epochs: int = 3) -> Path:
    """Train the judge classifier on data_dir's train/ (hflip, light crops) and return its best checkpoint."""
    from ..classification import train
    from ..registry import load_config

    images = sum(1 for p in (data_dir / "train").rglob("*") if p.is_file())
    cfg = load_config("classification", "synthetic", data_dir=str(data_dir), synthetic={}, output_dir=str(output_dir),
                      batch_size=max(1, min(64, images)),
                      run_name="judge", img_size=image_size, model_kwargs=JUDGE_MODEL_KWARGS, epochs=epochs,
                      warmup_epochs=0, hflip=0.5, progress=False, tensorboard=False, log_interval=1000)
    result = train(cfg)
    print(f"Judge classifier: val top-1 {result['val_top1']:.1f} % on the real images", flush=True)
    return Path(result["run_dir"]) / "checkpoints" / "best.pth"


def judge_run(checkpoint: Path, data_dir: Path, classifier: Path, samples_per_class: int = 50,
              scheduler: str = "ddpm", steps: int = 25, cfg_scale: float = 4.0, seed: int = 0,
              batch_size: int = 64, guided: int | str = 3) -> dict[str, Any]:
    """Accuracy (%) of the guided samples under the judge, and classifier-feature FIDs against the val images,
    with the settings that drew them: {"accuracy", "fid", "fid_floor", "untrained_fid", "untrained_accuracy",
    "samples", "scheduler", "steps", "cfg_scale", "guided_channels", "seed", "checkpoint", "classifier"}.
    guided: the channels guidance mixes, 3 (DiT's release) or "all"; the number it resolves to is recorded."""
    run = load_run_model(checkpoint, "generation")
    model, size, config = run.model, run.config.image_size, run.config.to_dict()
    untrained = run.task.build_checkpoint_model(run.config, run.extras).eval()  # the same network, fresh
    labels = sample_labels(samples_per_class * model.num_classes, model.num_classes)
    sampler = make_sampler(scheduler, steps, guided)
    scorer = classifier_scorer(classifier)
    reference = load_images(data_dir / config.get("val_split", "val"))
    ref_stats = gaussian_stats(scorer(reference)[0])
    train_images = load_images(data_dir / config.get("train_split", "train"), limit=len(reference))
    out = {"samples": len(labels), "scheduler": scheduler, "steps": steps, "cfg_scale": cfg_scale,
           "guided_channels": guided_channels(guided, model.in_channels), "seed": seed,
           "checkpoint": str(checkpoint), "classifier": str(classifier),
           "fid_floor": frechet_distance(*gaussian_stats(scorer(train_images)[0]), *ref_stats)}
    for name, net in (("", model), ("untrained_", untrained)):
        batches = range((len(labels) + batch_size - 1) // batch_size)
        drawn = generate(net, labels, size, sampler, seed, batch_size, batches, cfg_scale, torch.device("cpu"))
        features, probs = scorer(np.stack([drawn[i] for i in range(len(labels))]))
        out[f"{name}accuracy"] = 100.0 * float((probs.argmax(1) == labels.numpy()).mean())
        out[f"{name}fid"] = frechet_distance(*gaussian_stats(features), *ref_stats)
    return out
