"""Cost of dense-prediction models: backbone and total GMACs of Mask R-CNN and UperNet, and activation memory.

Everything is counted on the "meta" device (shapes only), with the same MAC convention as `count_macs` (fvcore's,
the paper's). The Mask R-CNN total is torchvision's test-time work at its defaults: the backbone and pyramid, the
RPN head on every level, the box head on 1,000 proposals and the mask head on 100 detections. RoIAlign, NMS and
the anchor bookkeeping are not counted (fvcore does not count them either); they are small next to the rest.

Memory is the training activation memory of the backbone at batch 1 in float32: the bytes of every tensor autograd
saves for the backward pass during one forward pass (parameters excluded). That is what grows with resolution and
what sets the peak of a training step. For DeiT it is given twice: as measured with attention that keeps its
N x N probabilities (the math path, what the meta device runs), and without those tensors, which is what a fused
(FlashAttention-style) kernel keeps instead of them. Quadratic against linear shows in both the MAC and the memory
columns as the input grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .flops import count_call_macs, count_macs

__all__ = ["DENSE_SIZES", "DenseCostRow", "MemoryRow", "dense_cost_rows", "memory_rows", "deit_of"]

# (height, width): ViTDet's 1024 x 1024 COCO input, the classic 1333 x 800 COCO input, and ADE20K's 512 x 2048.
DENSE_SIZES = [(1024, 1024), (800, 1333), (512, 2048)]
MEMORY_SIZES = [512, 768, 1024, 1536, 2048]

# torchvision's Mask R-CNN at test time: proposals kept after the RPN, detections that get a mask.
BOX_PROPOSALS = 1000
MASK_DETECTIONS = 100
COCO_CLASSES = 81  # 80 + background
ADE20K_CLASSES = 150


def deit_of(name: str) -> str:
    """The timm DeiT of the same width as the registered WeightFormer `name` (the paper's baseline)."""
    from ..models import create_model
    from .summary import DEIT_OF_WIDTH

    with torch.device("meta"):
        width = create_model(name).embed_dim
    if width not in DEIT_OF_WIDTH:
        raise ValueError(f"No DeiT of width {width} to compare {name} with (known widths: {sorted(DEIT_OF_WIDTH)}).")
    return DEIT_OF_WIDTH[width]


@dataclass
class DenseCostRow:
    """GMACs of one backbone in one dense model at one input size."""

    model: str  # "Mask R-CNN" or "UperNet"
    backbone: str
    height: int
    width: int
    backbone_gmacs: float
    total_gmacs: float


def _mask_rcnn_heads_gmacs(detector: nn.Module, maps: dict[str, torch.Tensor]) -> float:
    """RPN head on every level + box head on BOX_PROPOSALS RoIs + mask head on MASK_DETECTIONS RoIs."""
    heads = detector.roi_heads
    channels = next(iter(maps.values())).shape[1]
    pieces = [
        (detector.rpn.head, [list(maps.values())]),
        (nn.Sequential(heads.box_head, heads.box_predictor), [torch.empty(BOX_PROPOSALS, channels, 7, 7)]),
        (nn.Sequential(heads.mask_head, heads.mask_predictor), [torch.empty(MASK_DETECTIONS, channels, 14, 14)]),
    ]
    total = 0
    for module, args in pieces:
        total += count_call_macs(module, *args).total
    return total / 1e9


def _dense_models(backbone: str) -> tuple[nn.Module, nn.Module]:
    """(Mask R-CNN, UperNet segmenter) on `backbone`'s pyramid, built on the meta device."""
    from torchvision.models.detection import MaskRCNN

    from ..models.dense import create_dense_backbone
    from ..models.segmentation import create_segmenter

    with torch.device("meta"):
        detector = MaskRCNN(create_dense_backbone(backbone, drop_path_rate=0.0), num_classes=COCO_CLASSES)
        segmenter = create_segmenter(backbone, ADE20K_CLASSES, drop_path_rate=0.0)
    return detector.eval(), segmenter.eval()


def dense_cost_rows(name: str, sizes: list[tuple[int, int]] = DENSE_SIZES) -> list[DenseCostRow]:
    """Backbone and total GMACs of Mask R-CNN and UperNet on `name` and on the DeiT of its width, at each size."""
    rows = []
    for backbone in (name, deit_of(name)):
        detector, segmenter = _dense_models(backbone)
        pyramid = segmenter.pyramid  # the same pyramid as the detector's (create_dense_backbone, 256 channels)
        for height, width in sizes:
            macs = count_macs(segmenter, (3, height, width))  # one pass: UperNet, its pyramid and backbone
            # The pyramid calls forward_intermediates, which the counter does not see as a module call: the
            # backbone's share is the pyramid's minus its resampling stages.
            pyramid_gmacs = macs.by_module["pyramid"] / 1e9
            stages = sum(macs.by_module.get(f"pyramid.stages.{i}", 0) for i in range(len(pyramid.stages))) / 1e9
            backbone_gmacs = pyramid_gmacs - stages
            maps = _pyramid_maps(pyramid, height, width)
            detector_total = pyramid_gmacs + _mask_rcnn_heads_gmacs(detector, maps)
            rows.append(DenseCostRow("Mask R-CNN", backbone, height, width, backbone_gmacs, detector_total))
            rows.append(DenseCostRow("UperNet", backbone, height, width, backbone_gmacs, macs.gmacs))
    return rows


def _pyramid_maps(pyramid: nn.Module, height: int, width: int) -> dict[str, torch.Tensor]:
    """Empty meta tensors of the shapes SimpleFeaturePyramid returns for a (height, width) image."""
    maps = {str(i): torch.empty(1, pyramid.out_channels, -(-height // s), -(-width // s), device="meta")
            for i, s in enumerate(pyramid.strides)}
    last = maps[str(len(pyramid.strides) - 1)]
    maps["pool"] = torch.empty(1, pyramid.out_channels, -(-last.shape[2] // 2), -(-last.shape[3] // 2), device="meta")
    return maps


@dataclass
class MemoryRow:
    """Training activation memory of a backbone at one square input size (batch 1, float32), in MiB."""

    resolution: int
    tokens: int
    weightformer_mib: float
    deit_mib: float  # attention keeping its N x N probabilities
    deit_fused_mib: float  # the same without them (a fused attention kernel)


def saved_activation_bytes(model: nn.Module, image: torch.Tensor, quadratic_side: int | None = None) -> tuple[int, int]:
    """Bytes autograd saves for backward in model(image), parameters excluded; and the part held in tensors whose
    last two dimensions are both `quadratic_side` (attention probabilities, N x N).

    A tensor saved twice (an output kept by two consumers) or through views of one base counts once.
    """
    parameters = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base  # a view (weight.t(), a reshape) holds its base
        if id(base) not in parameters:
            saved[id(base)] = base
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(image)
    total = sum(t.numel() * t.element_size() for t in saved.values())
    square = sum(t.numel() * t.element_size() for t in saved.values()
                 if quadratic_side is not None and t.dim() >= 2 and t.shape[-1] == t.shape[-2] == quadratic_side)
    return total, square


def memory_rows(name: str, resolutions: list[int] = MEMORY_SIZES) -> list[MemoryRow]:
    """Activation memory of the WeightFormer `name` and the DeiT of its width, backbones only, as resolution grows."""
    import timm

    from ..models import create_model

    deit_name = deit_of(name)
    rows = []
    for res in resolutions:
        with torch.device("meta"):
            wfm = create_model(name, num_classes=0, img_size=res)
            deit = timm.create_model(deit_name, num_classes=0, img_size=res)
            image = torch.empty(1, 3, res, res)
        tokens = (res // deit.patch_embed.patch_size[0]) ** 2
        wfm_bytes, _ = saved_activation_bytes(wfm, image)
        deit_bytes, probabilities = saved_activation_bytes(deit, image, quadratic_side=tokens + deit.num_prefix_tokens)
        rows.append(MemoryRow(res, tokens, wfm_bytes / 2**20, deit_bytes / 2**20,
                              (deit_bytes - probabilities) / 2**20))
    return rows
