"""Effective receptive fields (ERF): how much each input pixel moves the central output token (the paper's Fig. 3).

For an image x (3, H, W) and a model's final feature map, take the central token's features f (C), the scalar
s = sum_c ReLU(f_c) (the ReLU keeps a final LayerNorm, whose outputs sum to its bias, from cancelling the
gradient), and its gradient with respect to the input. A pixel's contribution is |ds/dx| summed over the three
colour channels and over the images: a (H, W) map. The area fractions are the smallest share of the image's
pixels that together hold 20 %, 50 % and 99 % of the total contribution (larger = a wider effective field).
Maps are shown log-scaled relative to their maximum, on one colour scale for every panel.

A static network's ERF is bounded by its kernels: a pixel outside its receptive field contributes exactly zero.
WeightFormer's dynamic layers predict weights from statistics of the whole image, so every pixel contributes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..models import load_checkpoint

__all__ = ["ModelSpec", "ErfResult", "parse_model_spec", "build_model", "erf_map", "area_fractions",
           "load_images", "embedded_images", "compute_erfs", "plot_erfs", "THRESHOLDS"]

THRESHOLDS = (0.2, 0.5, 0.99)
LOG_FLOOR = 1e-6  # colour scale: log10(contribution / max) clipped at -6
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ModelSpec:
    """A registered model name, constructor overrides, and optional weights (random init without)."""

    name: str
    kwargs: dict[str, object] = field(default_factory=dict)
    checkpoint: str | None = None

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return self.name + (f" ({extra})" if extra else "") + ("" if self.checkpoint is None else " [weights]")


def parse_model_spec(text: str) -> ModelSpec:
    """'NAME', 'NAME:key=value,key=value' or either with '@CHECKPOINT', e.g. 'weightformer_tiny:dynamic_blocks=none'.

    Values are read as int, float, or kept as text.
    """
    text, _, checkpoint = text.partition("@")
    name, _, options = text.partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"model option {item!r} in {text!r} is not KEY=VALUE.")
        kwargs[key.strip()] = _parse_value(value.strip())
    if name not in timm.list_models():
        raise ValueError(f"Unknown model {name!r} (any timm model name, e.g. weightformer_tiny, deit_tiny_patch16_224, "
                         "convnext_tiny).")
    return ModelSpec(name, kwargs, checkpoint or None)


def _parse_value(value: str) -> object:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def build_model(spec: ModelSpec, img_size: int, seed: int = 0) -> nn.Module:
    """The model in eval mode, random weights drawn with `seed` or the spec's checkpoint, for `img_size` inputs."""
    torch.manual_seed(seed)
    try:  # models with a fixed token grid (ViT / DeiT position embeddings) are built for the ERF input size
        model = timm.create_model(spec.name, img_size=img_size, **spec.kwargs)
    except TypeError:  # convolutional models take any size and have no img_size argument
        model = timm.create_model(spec.name, **spec.kwargs)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()


def _central_token(model: nn.Module, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central token's features (B, C) of a final feature map in the model's layout."""
    if features.ndim == 3:  # (B, prefix + N, C) tokens: ViT / DeiT
        tokens = features[:, getattr(model, "num_prefix_tokens", 0) :]  # (B, N, C)
        patch_h, patch_w = model.patch_embed.patch_size
        grid_h, grid_w = height // patch_h, width // patch_w
        return tokens[:, (grid_h // 2) * grid_w + grid_w // 2]
    if getattr(model, "output_fmt", "NCHW") == "NHWC":  # (B, h, w, C): WeightFormer
        return features[:, features.shape[1] // 2, features.shape[2] // 2]
    return features[:, :, features.shape[2] // 2, features.shape[3] // 2]  # (B, C, h, w): ConvNeXt, ResNet


def erf_map(model: nn.Module, images: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Contribution of each pixel to the central output token: images (N, 3, H, W) -> (H, W), float64.

    |d sum_c ReLU(f_c) / dx| summed over colour channels and images, f the central token of forward_features.
    """
    height, width = images.shape[-2:]
    total = torch.zeros(height, width, dtype=torch.float64)
    for chunk in images.split(batch_size):
        x = chunk.clone().requires_grad_(True)
        centre = _central_token(model, model.forward_features(x), height, width)  # (B, C)
        (grad,) = torch.autograd.grad(F.relu(centre).sum(), x)  # (B, 3, H, W)
        total += grad.abs().sum(dim=(0, 1)).double().cpu()
    return total


def area_fractions(contribution: torch.Tensor, thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """Smallest fraction of pixels holding each share of the total contribution: {"0.2": ..., ...}."""
    values = contribution.flatten().sort(descending=True).values
    cumulative = values.cumsum(0) / values.sum()
    n = values.numel()
    return {str(t): (int(torch.searchsorted(cumulative, torch.tensor(t, dtype=cumulative.dtype))) + 1) / n
            for t in thresholds}


def embedded_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """`count` images of the package's embedded dataset (coloured shape pairs), drawn at `size` pixels."""
    from ..tasks.classification.synthetic import CLASS_NAMES, render_example

    rng = random.Random(seed)
    return [render_example(i % len(CLASS_NAMES), size, rng) for i in range(count)]


def load_images(folder: str | Path, count: int) -> list[Image.Image]:
    """Up to `count` images from `folder` (sorted by name), as RGB."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No image folder at {folder}.")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not paths:
        raise ValueError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}.")
    return [Image.open(p).convert("RGB") for p in paths]


def to_batch(images: list[Image.Image], size: int) -> torch.Tensor:
    """Square-resized (bicubic), ImageNet-normalised batch (N, 3, size, size)."""
    mean = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(timm.data.IMAGENET_DEFAULT_STD).view(3, 1, 1)
    tensors = []
    for image in images:
        array = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        tensors.append((torch.from_numpy(array).permute(2, 0, 1) - mean) / std)
    return torch.stack(tensors)


@dataclass
class ErfResult:
    label: str
    size: int
    area_fraction: dict[str, float]
    zero_fraction: float  # share of pixels with exactly zero contribution (outside the receptive field)
    contribution: torch.Tensor  # (H, W)

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("contribution")
        return out


def compute_erfs(
    specs: list[ModelSpec], sizes: list[int], images: list[Image.Image], seed: int = 0, batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> list[ErfResult]:
    """ERF of every model at every size, on the same images."""
    results = []
    for size in sizes:
        batch = to_batch(images, size).to(device)
        for spec in specs:
            contribution = erf_map(build_model(spec, size, seed).to(device), batch, batch_size)
            results.append(ErfResult(spec.label, size, area_fractions(contribution),
                                     float((contribution == 0).double().mean()), contribution))
    return results


def plot_erfs(results: list[ErfResult], path: str | Path) -> None:
    """A grid of log-scaled maps, one row per input size and one column per model, one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.size for r in results})
    labels = list(dict.fromkeys(r.label for r in results))
    fig, axes = plt.subplots(len(sizes), len(labels), figsize=(3.2 * len(labels), 3.4 * len(sizes)), squeeze=False)
    image = None
    for r in results:
        ax = axes[sizes.index(r.size)][labels.index(r.label)]
        relative = (r.contribution / r.contribution.max()).clamp_min(LOG_FLOOR)
        image = ax.imshow(relative.log10().numpy(), cmap="magma", vmin=np.log10(LOG_FLOOR), vmax=0)
        ax.set_title(f"{r.label}\n{r.size}x{r.size}, 99 %: {100 * r.area_fraction['0.99']:.1f} % of area",
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="log10(contribution / max)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(results: list[ErfResult], path: str | Path, images: int) -> None:
    payload = {"images": images, "thresholds": list(THRESHOLDS), "results": [r.as_json() for r in results]}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
