"""Evaluation (top-1 / top-5, loss, throughput) and prediction, for our checkpoints and the release's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ...engine.checkpoint import is_training_checkpoint
from ...engine.data import EpochSampler, make_loader
from ...engine.distributed import Dist, resolve_device
from ...engine.evaluation import evaluate
from ...engine.metrics import Metric
from ...models import create_model_from_checkpoint, read_state_dict
from ..loader import load_run_model
from .data import collate_images, eval_transform
from .sources import DataSource

__all__ = ["TopKAccuracy", "ClassifierValidation", "load_classifier", "evaluate_folder", "predict", "class_names_for"]


class TopKAccuracy(Metric):
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of logits against integer targets."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("totals", torch.zeros(4))  # correct@1, correct@5, loss sum, count

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()  # (B, K)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        hits = top == targets[:, None]
        self.totals[0] += hits[:, 0].sum()
        self.totals[1] += hits.any(dim=1).sum()
        self.totals[2] += F.cross_entropy(logits, targets, reduction="sum")
        self.totals[3] += len(targets)

    def compute(self) -> dict[str, float]:
        correct1, correct5, loss_sum, count = self.totals.tolist()
        count = max(count, 1)
        return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count}


class ClassifierValidation:
    """The validation step of an image classifier (batches of images and integer targets), shared by the
    classification and probe tasks and by `evaluate_folder`."""

    def validation_metrics(self) -> dict[str, Metric]:
        return {"accuracy": TopKAccuracy()}

    def validation_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                        metrics: dict[str, Metric]) -> None:
        images, targets = batch  # (B, 3, H, W), (B,)
        metrics["accuracy"].update(model(images), targets)


def load_classifier(checkpoint: str | Path, model_name: str | None = None, img_size: int | None = None,
                    ema: bool = True, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The classifier a checkpoint holds, loaded, in eval mode on `device`; and info: class_names, img_size,
    model, crop_pct, interpolation (the evaluation transform).

    Our training checkpoints go through the one loader of every task (`load_run_model`: their EMA weights unless
    `ema=False`). The release's files (.pth, .safetensors) say nothing of the model: name it with `model_name`
    (e.g. "weightformer_tiny"; the class count comes from the head's shape).
    """
    state = read_state_dict(checkpoint)
    if is_training_checkpoint(state):
        run = load_run_model(checkpoint, "classification", ema=ema, device=device, state=state)
        model, config, class_names = run.model, run.config.to_dict(), run.extras.get("class_names")
        if model_name is not None and model_name != config["model"]:
            raise ValueError(f"{checkpoint} holds a {config['model']}, not a {model_name}: --model is for files "
                             "that do not say which model they hold.")
    elif model_name is None:
        raise ValueError(f"{checkpoint} does not say which model it holds: pass the model name (e.g. "
                         "--model weightformer_tiny).")
    else:
        model = create_model_from_checkpoint(model_name, checkpoint, state=state).to(resolve_device(device)).eval()
        config, class_names = {}, state.get("class_names")
    size = img_size or config.get("img_size") or model.pretrained_cfg["input_size"][-1]
    # Our runs evaluate with their recipe's crop; the release's files with the release's (pretrained_cfg).
    crop_pct = config.get("crop_pct", model.pretrained_cfg.get("crop_pct", 224 / 256))
    interpolation = config.get("interpolation", model.pretrained_cfg.get("interpolation", "bicubic"))
    return model, {"class_names": class_names, "img_size": size, "model": config.get("model", model_name),
                   "crop_pct": crop_pct, "interpolation": interpolation}


def class_names_for(num_classes: int, stored: Sequence[str] | None = None,
                    data_dir: str | Path | None = None, split: str = "val") -> list[str]:
    """Class names: stored in the checkpoint, else the dataset's folders, else ImageNet's for 1000 classes."""
    if stored:
        return list(stored)
    if data_dir is not None:
        return list(DataSource.parse(str(data_dir)).open(split, None).classes)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def evaluate_folder(checkpoint: str | Path, data_dir: str | Path, split: str = "val", model_name: str | None = None,
                    img_size: int | None = None, batch_size: int = 128, workers: int = 4, device: str = "auto",
                    crop_pct: float | None = None, amp: bool = True, ema: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint (its EMA weights unless `ema=False`) on a split of a classification source
    (`<data_dir>/<split>/<class>/*`, or `wds:`, `hf:`, `hf-stream:` DIR) with the release's evaluation transform."""
    source = DataSource.parse(str(data_dir))
    dataset = source.open(split, None)
    model, info = load_classifier(checkpoint, model_name, img_size, ema)
    if model.num_classes != len(dataset.classes):
        raise ValueError(f"{checkpoint} classifies {model.num_classes} classes but the {split!r} split of {source} "
                         f"has {len(dataset.classes)}.")
    device = resolve_device(device)
    cfg = model.pretrained_cfg
    dataset.transform = eval_transform(info["img_size"], crop_pct or info["crop_pct"], info["interpolation"],
                                       cfg["mean"], cfg["std"])
    loader = make_loader(dataset, EpochSampler(len(dataset), shuffle=False), batch_size, workers,
                         collate_images, pin_memory=device.type == "cuda")
    amp_dtype = torch.bfloat16 if amp and device.type == "cuda" else None
    metrics = evaluate(ClassifierValidation(), model.to(device), loader, Dist(device=device), amp_dtype)
    return {**metrics, "img_size": info["img_size"], "model": info["model"], "checkpoint": str(checkpoint)}


@torch.no_grad()
def predict(checkpoint: str | Path, images: Sequence[str | Path], model_name: str | None = None,
            img_size: int | None = None, data_dir: str | Path | None = None, top_k: int = 5, ema: bool = True,
            device: str | torch.device = "cpu") -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file (the checkpoint's EMA weights unless `ema=False`)."""
    device = resolve_device(device)
    model, info = load_classifier(checkpoint, model_name, img_size, ema, device)
    names = class_names_for(model.num_classes, info["class_names"], data_dir)
    cfg = model.pretrained_cfg
    transform = eval_transform(info["img_size"], info["crop_pct"], info["interpolation"], cfg["mean"], cfg["std"])
    model.eval()
    results = []
    for path in images:
        x = transform(_open_image(path))[None].to(device)  # (1, 3, H, W)
        probs = model(x).float().softmax(dim=-1)[0].cpu()  # (K,)
        values, indices = probs.topk(min(top_k, len(probs)))
        results.append([(names[i], v) for i, v in zip(indices.tolist(), values.tolist(), strict=True)])
    return results


def _open_image(path: str | Path) -> Image.Image:
    """An RGB image, or a one-line error naming the file and the problem."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file.")
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL: UnidentifiedImageError, truncated data, ...
        reason = "empty file" if path.stat().st_size == 0 else f"{type(error).__name__}: {error}"
        raise ValueError(f"{path} is not a readable image ({reason}).") from None
