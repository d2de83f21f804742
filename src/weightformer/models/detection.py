"""Detection and instance segmentation: torchvision's Mask R-CNN on the simple feature pyramid of an isotropic backbone.

ViTDet ("Exploring Plain Vision Transformer Backbones for Object Detection", Li et al., 2022) puts Mask R-CNN on
a plain backbone's stride-16 map through a simple feature pyramid (models/dense.py) and changes the heads only
slightly from the FPN recipe: a 2-conv RPN head, a box head of 4 convs and 1 fc, a mask head of 4 convs, all with
LayerNorm. torchvision has each of these pieces (`RPNHead(conv_depth=2)`, `FastRCNNConvFCHead`, `MaskRCNNHeads`
with a `norm_layer`), so the detector here is torchvision's `MaskRCNN` assembled from them; the widths are
arguments so that the embedded CPU default can use a small version of the same network.

Inputs and outputs are torchvision's: a list of (3, H, W) images in [0, 1] (normalised and resized by the model's
transform), targets with `boxes` (N, 4) xyxy in pixels, `labels` (N,) in 1..K (0 is background) and `masks`
(N, H, W) uint8; in eval mode, per image `boxes`, `labels`, `scores` and `masks` (N, 1, H, W) probabilities, in the
coordinates of the image as given. Without masks (`masks=False`, for box-only data) the same network without its
mask branch is torchvision's Faster R-CNN: no `masks` in targets or outputs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .dense import LayerNorm2d, SimpleFeaturePyramid, _prefixed, create_dense_backbone

__all__ = ["Detector", "create_detector"]


def _rcnn_class(masks: bool):
    """torchvision's MaskRCNN, or FasterRCNN (its base: the same network without the mask branch)."""
    try:
        from torchvision.models.detection import FasterRCNN, MaskRCNN
    except ImportError:  # torchvision is in the `detection` extra
        raise ModuleNotFoundError("Detection needs torchvision: pip install 'weightformer[detection]'.") from None
    return MaskRCNN if masks else FasterRCNN


class Detector(nn.Module):
    """torchvision's Mask (or Faster) R-CNN over a SimpleFeaturePyramid, with the layer groups for layer-wise lr
    decay.

    A thin wrapper (rather than a subclass, so that importing this module does not import torchvision): `forward`
    is Mask R-CNN's, `group_matcher` the backbone's, under `rcnn.backbone.`.
    """

    def __init__(self, rcnn: nn.Module) -> None:
        super().__init__()
        self.rcnn = rcnn

    @property
    def pyramid(self) -> SimpleFeaturePyramid:
        return self.rcnn.backbone

    @property
    def has_masks(self) -> bool:
        return self.rcnn.roi_heads.has_mask()

    def forward(self, images: list, targets: list[dict] | None = None) -> Any:
        """Training: a dict of the five Mask R-CNN losses (four without masks); evaluation: a list of per-image
        predictions."""
        return self.rcnn(images, targets)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's block activations in the backward pass (the heads are left as they are)."""
        self.pyramid.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Backbone blocks decay layer by layer; the pyramid and the heads learn at the full rate."""
        inner = self.pyramid.group_matcher(coarse)
        return {key: _prefixed(rule, "rcnn.backbone.") for key, rule in inner.items()}


def create_detector(backbone: str, num_classes: int, out_channels: int = 256, *,
                    min_size: int | tuple[int, ...] = 800, max_size: int = 1333,
                    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0), rpn_convs: int = 2, head_channels: int = 256,
                    box_convs: int = 4, box_fc: int = 1024, box_fcs: int = 1, mask_convs: int = 4,
                    checkpoint: str | Path | None = None, drop_path_rate: float = 0.1,
                    rcnn_kwargs: dict[str, Any] | None = None, masks: bool = True, **model_kwargs: Any) -> Detector:
    """Mask R-CNN with ViTDet-style heads on a WeightFormer (`weightformer_*`) or timm DeiT (`deit_*`) pyramid.

    Args:
        backbone: registered model name; `model_kwargs` (embed_dim, depth, ...) go to it.
        num_classes: object categories, without the background (torchvision's count is this + 1).
        out_channels: width of the pyramid's maps (and of the RPN).
        min_size, max_size: the model's resize: shorter side to `min_size` (a random choice of the tuple in
            training), longer side at most `max_size`. Evaluation uses the last `min_size`.
        anchor_sizes: one anchor size per pyramid level (strides 4, 8, 16, 32, 64), each at `aspect_ratios`.
        rpn_convs: 3x3 convs in the RPN head (ViTDet: 2).
        head_channels, box_convs, box_fc, box_fcs, mask_convs: box head of `box_convs` 3x3 convs of `head_channels`
            then `box_fcs` fcs of `box_fc`; mask head of `mask_convs` 3x3 convs of `head_channels` (ViTDet: 256, 4,
            1024, 1, 4; the FPN recipe's box head is 0 convs and 2 fcs).
        checkpoint: a classification checkpoint for the backbone (ours or the release's).
        rcnn_kwargs: further torchvision MaskRCNN arguments (proposal counts, sampling, thresholds).
        masks: False builds the network without its mask head (torchvision's FasterRCNN), for box-only data.
    """
    rcnn_class = _rcnn_class(masks)
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead

    pyramid = create_dense_backbone(backbone, out_channels, checkpoint=checkpoint, drop_path_rate=drop_path_rate,
                                    **model_kwargs)
    levels = len(pyramid.stages) + 1  # the pyramid's maps and "pool"
    if len(anchor_sizes) != levels:
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({levels}), got {list(anchor_sizes)}.")
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), (tuple(aspect_ratios),) * levels)
    norm = partial(LayerNorm2d, eps=1e-6)
    heads = dict(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(out_channels, len(aspect_ratios), conv_depth=rpn_convs),
        box_head=FastRCNNConvFCHead((out_channels, 7, 7), [head_channels] * box_convs, [box_fc] * box_fcs,
                                    norm_layer=norm),
        box_predictor=FastRCNNPredictor(box_fc, num_classes + 1),  # classes + background
    )
    if masks:  # (built after the others, as always: the same initial weights as before box-only existed)
        heads.update(mask_head=MaskRCNNHeads(out_channels, [head_channels] * mask_convs, 1, norm_layer=norm),
                     mask_predictor=MaskRCNNPredictor(head_channels, head_channels, num_classes + 1))
    rcnn = rcnn_class(pyramid, num_classes=None, min_size=min_size, max_size=max_size,
                      image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
                      **heads, **(rcnn_kwargs or {}))
    return Detector(rcnn)
