"""Isotropic backbones for dense prediction: ViTDet's simple feature pyramid over WeightFormer (or DeiT).

Paper: "Exploring Plain Vision Transformer Backbones for Object Detection" (Li, Mao, Girshick, He, 2022):
an isotropic network's last stride-16 map, without a hierarchy, is enough for detection when a few
(de)convolutions turn it into a pyramid at strides 4, 8, 16 and 32. Here that pyramid sits on
`forward_intermediates`, which every timm-style isotropic model has, so WeightFormer and its attention baseline
(timm's DeiT of the same width) are wrapped by the same code.

The output follows torchvision's FPN: an OrderedDict of maps named "0".."3" (strides 4..32) and "pool"
(stride 64, max-pooled), all with `out_channels` channels, so torchvision's Mask R-CNN heads take it as is.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerNorm2d", "SimpleFeaturePyramid", "create_dense_backbone", "layer_decay_groups"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (ViTDet's norm in the pyramid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)


def _scale_stage(dim: int, scale: float) -> tuple[nn.Module, int]:
    """The layers that take the stride-16 map to stride 16/scale; returns them and their output width."""
    if scale == 4.0:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2, eps=1e-6),
                             nn.GELU(), nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)), dim // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
    if scale == 1.0:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2), dim
    raise ValueError(f"Pyramid scales must be among 4, 2, 1, 0.5; got {scale}.")


class SimpleFeaturePyramid(nn.Module):
    """Feature maps at strides 4, 8, 16, 32 (and 64) from an isotropic backbone's last stride-16 map.

    Args:
        backbone: a model with `forward_intermediates(x, indices, output_fmt="NCHW", intermediates_only=True)`,
            `patch_size` 16 and `embed_dim` (WeightFormer, or timm's DeiT built with dynamic_img_size=True).
        out_channels: width of every output map.
        scales: upsampling factors of the stride-16 map (4: stride 4, ..., 0.5: stride 32).
        min_tokens: the smallest token grid the backbone accepts (3 for WeightFormer's 3x3 pooling).
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 256, scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
                 min_tokens: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        # The pyramid reads the last block's output without the classifier's final norm (ViTDet), so that norm
        # gets no gradient: frozen, DistributedDataParallel does not wait for it and the optimiser leaves it out,
        # while classification checkpoints (which hold it) still load as they are.
        for name in ("norm", "fc_norm"):
            if isinstance(getattr(backbone, name, None), nn.Module):
                getattr(backbone, name).requires_grad_(False)
        self.out_channels = out_channels
        self.strides = [int(16 / s) for s in scales]
        self.min_tokens = min_tokens
        dim = backbone.embed_dim
        stages = []
        for scale in scales:
            resample, width = _scale_stage(dim, scale)
            stages.append(nn.Sequential(
                resample,
                nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels, eps=1e-6),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels, eps=1e-6),
            ))
        self.stages = nn.ModuleList(stages)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size the backbone sees: a multiple of the coarsest stride, at least min_tokens patches."""
        multiple = max(self.strides)
        least = self.min_tokens * 16

        def up(n: int) -> int:
            return max(least, math.ceil(n / multiple) * multiple)

        return up(height), up(width)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """x: (B, 3, H, W), any H and W -> {"0": (B, D, ceil(H/4), ceil(W/4)), ..., "pool": stride 64}.

        The input is zero-padded at the bottom and right to `padded_size`, and the maps are cropped back to the
        extent of the real image, so a box at pixel (x, y) maps to the same place at every stride.
        """
        height, width = x.shape[-2:]
        padded = self.padded_size(height, width)
        x = F.pad(x, (0, padded[1] - width, 0, padded[0] - height))  # (B, 3, H', W')
        top = self.backbone.forward_intermediates(x, indices=1, output_fmt="NCHW", intermediates_only=True)[-1]
        maps = OrderedDict()
        for i, (stage, stride) in enumerate(zip(self.stages, self.strides, strict=True)):
            y = stage(top)  # (B, D, H'/stride, W'/stride)
            maps[str(i)] = y[..., : math.ceil(height / stride), : math.ceil(width / stride)]
        maps["pool"] = F.max_pool2d(maps[str(len(self.stages) - 1)], kernel_size=1, stride=2)  # torchvision's FPN
        return maps

    def load_classifier_weights(self, source: str | Path | dict[str, Any]) -> None:
        """Load a classification checkpoint (ours or the release's) into the backbone; its head is left out."""
        from .checkpoint import load_checkpoint, read_state_dict

        state = source if isinstance(source, dict) else read_state_dict(source)
        state = state.get("model", state.get("state_dict", state))
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "module.head."))}
        load_checkpoint(self.backbone, state, origin=None if isinstance(source, dict) else source)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the backbone's blocks (WeightFormer's, or timm DeiT's own, in `forward_intermediates`).

        The pyramid's few (de)convolutions stay as they are: at detection resolutions the backbone's blocks hold
        nearly all the activation memory.
        """
        self.backbone.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for layer-wise lr decay: the backbone's own, then the pyramid (and heads) last."""
        inner = self.backbone.group_matcher(coarse)
        return {key: _prefixed(rule, "backbone.") for key, rule in inner.items()}


def _prefixed(rule: Any, prefix: str) -> Any:
    """A timm group_matcher rule (a regex, or a list of (regex, ...) pairs) matched under `prefix`."""
    if isinstance(rule, str):  # "^a|b" -> "^prefix\.(?:a|b)": every alternative under the prefix
        return "^" + re.escape(prefix) + "(?:" + rule.removeprefix("^").replace("|^", "|") + ")"
    return [(_prefixed(pattern, prefix), *rest) for pattern, *rest in rule]


def create_dense_backbone(name: str, out_channels: int = 256, checkpoint: str | Path | None = None,
                          drop_path_rate: float = 0.1, **kwargs: Any) -> SimpleFeaturePyramid:
    """A feature pyramid over a registered WeightFormer (`weightformer_tiny`, ...) or a timm DeiT (`deit_*`).

    `checkpoint` is a classification checkpoint loaded into the backbone (ours, the release's .pth or .safetensors).
    """
    if name.startswith("deit"):
        import timm

        backbone = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                     drop_path_rate=drop_path_rate, **kwargs)
        min_tokens = 1
    else:
        from .factory import create_model

        backbone = create_model(name, num_classes=0, drop_path_rate=drop_path_rate, **kwargs)
        min_tokens = backbone.min_grid
    pyramid = SimpleFeaturePyramid(backbone, out_channels, min_tokens=min_tokens)
    if checkpoint is not None:
        pyramid.load_classifier_weights(checkpoint)
    return pyramid


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with lr x layer_decay^(depth - layer) (timm's layer-wise decay on `group_matcher`)."""
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return groups
