"""Model specs for the probes: one compact string names a network and its sizes.

    static                                       WeightFormer with every block static (dynamic=none)
    weightformer                                 the release's layout: sparse dynamic blocks, bilateral/adaptive
    weightformer:linear=query_pool,conv=query_pool,dynamic=all
    vit:heads=3                                  timm's ViT (DeiT layout: class token, learned position embedding)
    vit_small_patch16_224:embed_dim=48           any timm or WeightFormer registered name, keyword arguments as is

Keys of `weightformer` / `static`: width, depth, patch, mlp_ratio, dynamic (sparse, all, none, or block indices
joined by '-', e.g. 1-4), linear, conv (predictor names, see `weightformer.layers`). Keys of `vit`: width, depth,
patch, heads, mlp_ratio. Unset sizes come from the suite's defaults (width 48, depth 2, patch 4): every model of
a comparison has the same width, depth and patch size unless a spec says otherwise. Values are parsed as YAML.
"""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn
import yaml

from ...models import create_model, list_models

__all__ = ["parse_model_spec", "build_probe_model", "DEFAULT_SIZES"]

# Small enough to learn the probes in minutes on a CPU (benchmarks/PROBES.md); --depth 6 is the size.
DEFAULT_SIZES = {"width": 48, "depth": 2, "patch": 4}
_WEIGHTFORMER_KEYS = {"width", "depth", "patch", "mlp_ratio", "dynamic", "linear", "conv"}
_VIT_KEYS = {"width", "depth", "patch", "heads", "mlp_ratio"}


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'name:key=value,key=value' -> (name, {key: value}); values parsed as YAML (numbers, words)."""
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise ValueError(f"Model spec {spec!r} has no name (e.g. 'weightformer:linear=query_pool').")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Model spec {spec!r}: {item!r} is not key=value.")
        options[key.strip()] = yaml.safe_load(value.strip())
    return name, options


def _check_keys(spec: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"Model spec {spec!r}: unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}.")


def _dynamic_blocks(value: Any) -> Any:
    if isinstance(value, int):
        return [value]
    if isinstance(value, str) and value not in ("sparse", "all", "none"):
        try:
            return [int(i) for i in value.split("-")]
        except ValueError:
            raise ValueError(f"dynamic must be sparse, all, none or block indices like 1-4, got {value!r}.") from None
    return value


def build_probe_model(spec: str, num_classes: int, img_size: int, defaults: dict[str, Any] | None = None) -> nn.Module:
    """The network a spec names, freshly initialised, for `num_classes` outputs at `img_size`."""
    name, options = parse_model_spec(spec)
    sizes = {**DEFAULT_SIZES, **(defaults or {})}
    if name in ("weightformer", "static"):
        _check_keys(spec, options, _WEIGHTFORMER_KEYS)
        o = {**sizes, **options}
        if name == "static":
            if o.get("dynamic", "none") != "none":
                raise ValueError(f"Model spec {spec!r}: static means dynamic=none.")
            o["dynamic"] = "none"
        return create_model(
            "weightformer_tiny", num_classes=num_classes, img_size=img_size, embed_dim=o["width"], depth=o["depth"],
            patch_size=o["patch"], mlp_ratio=o.get("mlp_ratio", 4.0),
            dynamic_blocks=_dynamic_blocks(o.get("dynamic", "sparse")),
            linear_predictor=o.get("linear", "bilateral"), conv_predictor=o.get("conv", "adaptive"))
    if name == "vit":
        _check_keys(spec, options, _VIT_KEYS)
        o = {**sizes, **options}
        return timm.create_model(
            "vit_tiny_patch16_224", num_classes=num_classes, img_size=img_size, embed_dim=o["width"],
            depth=o["depth"], patch_size=o["patch"], num_heads=o.get("heads", 3), mlp_ratio=o.get("mlp_ratio", 4.0))
    if name.split(".")[0] in list_models():
        return create_model(name, num_classes=num_classes, img_size=img_size, **options)
    if not timm.is_model(name):
        raise ValueError(f"Unknown model {name!r} in spec {spec!r}: use weightformer, static, vit, or a timm or "
                         "WeightFormer model name.")
    return timm.create_model(name, num_classes=num_classes, img_size=img_size, **options)
