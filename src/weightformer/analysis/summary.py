"""Model cards computed from the code: parameters, MACs per layer, and cost against DeiT as resolution grows."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..models import MODEL_CONFIGS, create_model
from ..models.dit import DIT_MODELS
from .flops import MacCount, count_call_macs, count_macs

__all__ = [
    "DEIT_OF_WIDTH",
    "PAPER_TOP1",
    "LayerCost",
    "ModelRow",
    "ScalingRow",
    "format_table",
    "layer_costs",
    "macs_per_image",
    "model_rows",
    "scaling_rows",
]

# The DeiT of the same token width, the paper's baseline (timm names).
DEIT_OF_WIDTH = {192: "deit_tiny_patch16_224", 384: "deit_small_patch16_224", 768: "deit_base_patch16_224"}

# ImageNet-1K top-1 read off the paper's Fig. 1 (ImageNet accuracy against cost), for the model table.
PAPER_TOP1 = {"weightformer_tiny": 76.3, "weightformer_small": 81.3, "weightformer_base": 83.4}


def _on_meta(build) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class ModelRow:
    name: str
    params_m: float
    gmacs: float
    input_size: tuple[int, int]
    dynamic_blocks: tuple[int, ...]
    top1_paper: float | None


def model_rows() -> list[ModelRow]:
    """One row per registered variant, at its default input size."""
    rows = []
    for name in sorted(MODEL_CONFIGS):
        model = _on_meta(lambda name=name: create_model(name))
        h, w = model.img_size
        rows.append(
            ModelRow(
                name=name,
                params_m=_params(model) / 1e6,
                gmacs=count_macs(model, (model.in_chans, h, w)).gmacs,
                input_size=(h, w),
                dynamic_blocks=model.dynamic_indices,
                top1_paper=PAPER_TOP1.get(name),
            )
        )
    return rows


@dataclass
class LayerCost:
    layer: str
    kind: str
    params: int
    gmacs: float


def layer_costs(model: nn.Module, img_size: tuple[int, int]) -> list[LayerCost]:
    """Parameters and MACs of the patch embedding, each block, and the norm + head."""
    macs = count_macs(model, (model.in_chans, *img_size)).by_module
    rows = [LayerCost("patch_embed", "stem", _params(model.patch_embed), macs.get("patch_embed", 0) / 1e9)]
    for i, block in enumerate(model.blocks):
        kind = "dynamic" if block.dynamic else "static"
        rows.append(LayerCost(f"blocks.{i}", kind, _params(block), macs.get(f"blocks.{i}", 0) / 1e9))
    head_macs = macs.get("norm", 0) + macs.get("head", 0)
    rows.append(LayerCost("norm + head", "head", _params(model.norm) + _params(model.head), head_macs / 1e9))
    return rows


def macs_per_image(name: str, resolution: int, **model_kwargs) -> MacCount:
    """MACs of one forward pass on one input of side `resolution`, attention's N^2 products included.

    `name`: a classifier (WeightFormer or a timm baseline such as DeiT; `resolution` is the image side) or a
    WeightFormer-DiT / DiT name (`resolution` is the latent side; one latent, its timestep and label). The one
    count `weightformer bench` and `scaling_rows` set their measurements beside.
    """
    if name in DIT_MODELS:
        model = _on_meta(lambda: create_model(name, input_size=resolution, **model_kwargs))
        channels = model.in_channels
        latent = torch.empty(1, channels, resolution, resolution)
        return count_call_macs(model, latent, torch.zeros(1), torch.zeros(1, dtype=torch.long))
    model = _on_meta(lambda: create_model(name, img_size=resolution, **model_kwargs))
    return count_macs(model, (getattr(model, "in_chans", 3), resolution, resolution))


@dataclass
class ScalingRow:
    resolution: int
    weightformer_gmacs: float
    deit_gmacs: float
    deit_over_weightformer: float


def scaling_rows(name: str, resolutions: list[int], **model_kwargs) -> tuple[str, list[ScalingRow]]:
    """GMACs of a WeightFormer and of the DeiT of the same width at square resolutions."""
    model = _on_meta(lambda: create_model(name, **model_kwargs))
    deit_name = DEIT_OF_WIDTH.get(model.embed_dim)
    if deit_name is None:
        raise ValueError(f"No DeiT of width {model.embed_dim} to compare with (known: {sorted(DEIT_OF_WIDTH)}).")
    rows = []
    for res in resolutions:
        wfm = count_macs(model, (model.in_chans, res, res)).gmacs
        deit_gmacs = macs_per_image(deit_name, res).gmacs
        rows.append(ScalingRow(res, wfm, deit_gmacs, deit_gmacs / wfm))
    return deit_name, rows


def as_dicts(rows: list) -> list[dict]:
    return [asdict(r) for r in rows]


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain-text table, numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) if cells else False for i in range(len(headers))]

    def line(values: list[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return False
