"""Semantic segmentation networks: an UperNet head on the simple feature pyramid of an isotropic backbone.

UperNet ("Unified Perceptual Parsing", Xiao et al., 2018) is the ADE20K standard head: a pyramid pooling module
on the coarsest map, a top-down path that adds each coarser level into the next finer one, 3x3 convs on every
level, and a fusion of all levels at stride 4 before the per-pixel classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dense import SimpleFeaturePyramid, create_dense_backbone

__all__ = ["UperNetHead", "Segmenter", "create_segmenter"]


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UperNetHead(nn.Module):
    """Pyramid pooling + top-down fusion over maps at strides 4, 8, 16, 32 -> class logits at stride 4."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, levels: int = 4,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.pool = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_bn_relu(in_channels, channels, 1)) for s in pool_scales)
        self.bottleneck = _conv_bn_relu(in_channels + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_bn_relu(in_channels, channels, 1) for _ in range(levels - 1))
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in range(levels - 1))
        self.fuse = _conv_bn_relu(levels * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _pyramid_pooling(self, top: torch.Tensor) -> torch.Tensor:
        size = top.shape[-2:]
        pooled = [F.interpolate(p(top), size=size, mode="bilinear", align_corners=False) for p in self.pool]
        return self.bottleneck(torch.cat([top, *pooled], dim=1))  # (B, D, h32, w32)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """maps: finest first, (B, C, H/4, W/4) ... (B, C, H/32, W/32) -> logits (B, K, H/4, W/4)."""
        laterals = [conv(m) for conv, m in zip(self.lateral, maps[:-1], strict=True)]
        laterals.append(self._pyramid_pooling(maps[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="bilinear", align_corners=False)
        outs = [conv(x) for conv, x in zip(self.smooth, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))  # (B, K, H/4, W/4)


class Segmenter(nn.Module):
    """Backbone pyramid + UperNet: images (B, 3, H, W) -> per-pixel class logits (B, K, H, W)."""

    def __init__(self, pyramid: SimpleFeaturePyramid, num_classes: int, channels: int = 512) -> None:
        super().__init__()
        self.pyramid = pyramid
        self.num_classes = num_classes
        self.head = UperNetHead(pyramid.out_channels, channels, num_classes, levels=len(pyramid.stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.pyramid(x)  # "0".."3": strides 4..32
        logits = self.head([maps[str(i)] for i in range(len(self.pyramid.stages))])  # (B, K, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, K, H, W)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's block activations in the backward pass (the UperNet head is left as it is)."""
        self.pyramid.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer-wise lr decay groups: the backbone's blocks; the pyramid and the head learn at the full rate."""
        inner = self.pyramid.group_matcher(coarse)
        from .dense import _prefixed

        return {key: _prefixed(rule, "pyramid.") for key, rule in inner.items()}

    def no_weight_decay(self) -> set[str]:
        return set()


def create_segmenter(backbone: str, num_classes: int, out_channels: int = 256, channels: int = 512,
                     checkpoint: str | Path | None = None, drop_path_rate: float = 0.1, **kwargs: Any) -> Segmenter:
    """UperNet on the feature pyramid of `backbone` (a WeightFormer name or a timm `deit_*`)."""
    pyramid = create_dense_backbone(backbone, out_channels, checkpoint=checkpoint, drop_path_rate=drop_path_rate,
                                    **kwargs)
    return Segmenter(pyramid, num_classes, channels)
