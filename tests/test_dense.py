"""The dense-prediction backbone: a ViTDet simple feature pyramid over WeightFormer and over DeiT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import weightformer
from test_checkpoints import release_state_dict
from weightformer.models.dense import SimpleFeaturePyramid, create_dense_backbone, layer_decay_groups

SMALL = dict(embed_dim=32, depth=4)


@pytest.mark.parametrize("name", ["weightformer_tiny", "deit_tiny_patch16_224"])
@pytest.mark.parametrize("size", [(100, 130), (64, 64), (33, 200)])
def test_pyramid_strides_cover_any_input_size(name, size):
    torch.manual_seed(0)
    kwargs = SMALL if name.startswith("weightformer") else dict(embed_dim=32, depth=2, num_heads=2)
    pyramid = create_dense_backbone(name, out_channels=24, drop_path_rate=0.0, **kwargs).eval()
    maps = pyramid(torch.randn(2, 3, *size))
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    for key, stride in zip(["0", "1", "2", "3"], [4, 8, 16, 32], strict=True):
        assert maps[key].shape == (2, 24, math.ceil(size[0] / stride), math.ceil(size[1] / stride)), key
    assert maps["pool"].shape[-2:] == (math.ceil(maps["3"].shape[-2] / 2), math.ceil(maps["3"].shape[-1] / 2))


def test_padding_is_undone_by_cropping_the_maps():
    # The pyramid of a 100x130 image is the pyramid of its zero-padded 128x160 version, cropped to the image.
    torch.manual_seed(1)
    pyramid = create_dense_backbone("weightformer_tiny", out_channels=16, drop_path_rate=0.0, **SMALL).eval()
    x = torch.randn(1, 3, 100, 130)
    assert pyramid.padded_size(100, 130) == (128, 160)
    with torch.no_grad():
        cropped = pyramid(x)
        full = pyramid(F.pad(x, (0, 30, 0, 28)))
    for key, stride in zip(["0", "1", "2", "3"], [4, 8, 16, 32], strict=True):
        h, w = math.ceil(100 / stride), math.ceil(130 / stride)
        torch.testing.assert_close(cropped[key], full[key][..., :h, :w])
        assert full[key].shape[-2:] != cropped[key].shape[-2:] or stride == 32


def test_classification_checkpoints_load_into_the_backbone(tmp_path):
    state = release_state_dict(width=32, depth=4)  # the release's key names and layouts, with a 1000-class head
    torch.save({"model": state}, tmp_path / "wfm.pth")
    pyramid = create_dense_backbone("weightformer_tiny", checkpoint=tmp_path / "wfm.pth", **SMALL)
    classifier = weightformer.create_model("weightformer_tiny", num_classes=1000, **SMALL)
    weightformer.load_checkpoint(classifier, tmp_path / "wfm.pth")
    ours = pyramid.backbone.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(ours[key], value), key
    wrong = release_state_dict(width=48, depth=4)
    with pytest.raises(ValueError, match="does not fit"):
        pyramid.load_classifier_weights(wrong)


def test_layer_decay_scales_the_lr_from_the_pyramid_down_to_the_stem():
    pyramid = create_dense_backbone("weightformer_tiny", out_channels=16, **SMALL)
    groups = layer_decay_groups(pyramid, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in pyramid.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["stages.0.1.weight"] == 1.0  # the pyramid learns at the full rate
    assert scale["backbone.blocks.3.norm2.weight"] == 0.5  # the last block: one step down
    assert scale["backbone.blocks.0.norm2.weight"] == 0.5**4
    assert scale["backbone.patch_embed.proj.weight"] == 0.5**5
    trainable = [p for p in pyramid.parameters() if p.requires_grad]  # all but the unused final norm
    assert len({id(p) for g in groups for p in g["params"]}) == len(trainable) == len(list(pyramid.parameters())) - 2
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "backbone.blocks.1.mlp.fc1.weight" in decay and "backbone.blocks.0.norm2.weight" not in decay


def test_torchvision_mask_rcnn_trains_on_the_pyramid():
    from torchvision.models.detection import MaskRCNN

    torch.manual_seed(0)
    pyramid = create_dense_backbone("weightformer_tiny", out_channels=32, **SMALL)
    detector = MaskRCNN(pyramid, num_classes=3, min_size=96, max_size=128)
    images = [torch.rand(3, 96, 120), torch.rand(3, 80, 96)]
    masks = torch.zeros(1, 96, 120, dtype=torch.uint8)
    masks[0, 20:60, 30:90] = 1
    targets = [dict(boxes=torch.tensor([[30.0, 20.0, 90.0, 60.0]]), labels=torch.tensor([1]), masks=masks),
               dict(boxes=torch.tensor([[10.0, 10.0, 40.0, 50.0]]), labels=torch.tensor([2]),
                    masks=torch.zeros(1, 80, 96, dtype=torch.uint8))]
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert pyramid.backbone.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0  # gradients reach the backbone
    # Every parameter that trains gets a gradient (DistributedDataParallel requires it); the final norm does not.
    assert all(p.grad is not None for p in detector.parameters() if p.requires_grad)
    assert not pyramid.backbone.norm.weight.requires_grad and pyramid.backbone.norm.weight.grad is None


def test_pyramid_rejects_unknown_scales():
    backbone = weightformer.create_model("weightformer_tiny", num_classes=0, **SMALL)
    with pytest.raises(ValueError, match="among 4, 2, 1, 0.5"):
        SimpleFeaturePyramid(backbone, scales=(8.0,))


# ---------------------------------------------------------------------------------------------------------------
# Cost report (weightformer summary NAME --dense)
# ---------------------------------------------------------------------------------------------------------------


def _mask_rcnn_heads_macs_by_hand(maps_hw: list[tuple[int, int]], channels: int = 256, classes: int = 81) -> int:
    """torchvision's Mask R-CNN heads, MACs written out: RPN conv3x3 + 1x1 logits (3 anchors) + 1x1 deltas on every
    level; TwoMLPHead (7*7*C -> 1024 -> 1024) + class/box predictors on 1000 RoIs; four 3x3 convs at 14x14, a 2x2
    transposed conv to 28x28 and a 1x1 class conv on 100 RoIs."""
    rpn = sum(h * w * (channels * channels * 9 + channels * 3 + channels * 12) for h, w in maps_hw)
    box = 1000 * (7 * 7 * channels * 1024 + 1024 * 1024 + 1024 * classes + 1024 * classes * 4)
    mask = 100 * (4 * 14 * 14 * channels * channels * 9 + 14 * 14 * channels * channels * 4
                  + 28 * 28 * channels * classes)
    return rpn + box + mask


def test_dense_cost_counts_heads_exactly_and_backbones_scale_as_claimed(monkeypatch):
    from weightformer.analysis import dense_cost
    from weightformer.analysis.flops import count_macs

    sizes = [(128, 128), (256, 224)]
    rows = {(r.model, r.backbone, r.height, r.width): r for r in dense_cost.dense_cost_rows("weightformer_tiny", sizes)}
    deit = dense_cost.deit_of("weightformer_tiny")
    assert deit == "deit_tiny_patch16_224"
    detector, _ = dense_cost._dense_models("weightformer_tiny")
    for height, width in sizes:
        ours = rows[("Mask R-CNN", "weightformer_tiny", height, width)]
        pyramid_macs = count_macs(detector.backbone, (3, height, width)).total
        levels = [(-(-height // s), -(-width // s)) for s in (4, 8, 16, 32)]
        levels.append((-(-levels[-1][0] // 2), -(-levels[-1][1] // 2)))  # the stride-64 "pool" level
        expected = (pyramid_macs + _mask_rcnn_heads_macs_by_hand(levels)) / 1e9
        assert ours.total_gmacs == pytest.approx(expected, rel=1e-9)
        assert rows[("UperNet", "weightformer_tiny", height, width)].total_gmacs > ours.backbone_gmacs
        padded = detector.backbone.padded_size(height, width)
        # The pyramid's backbone is the classifier's forward less its final LayerNorm (forward_intermediates).
        classifier_forward = count_macs(detector.backbone.backbone, (3, *padded)).gmacs
        assert ours.backbone_gmacs == pytest.approx(classifier_forward, rel=1e-3)
        assert ours.backbone_gmacs < classifier_forward
    # WeightFormer's backbone is linear in the pixels; DeiT's grows faster (attention is quadratic).
    # 8 x 8 tokens, then 16 x 14: 3.5 times as many.
    small, large = (rows[("UperNet", "weightformer_tiny", *s)].backbone_gmacs for s in sizes)
    assert large / small == pytest.approx(3.5, rel=0.02)
    deit_small, deit_large = (rows[("UperNet", deit, *s)].backbone_gmacs for s in sizes)
    assert deit_large / deit_small > 3.6


def test_saved_activation_bytes_match_a_hand_count_and_attention_memory_is_quadratic():
    from weightformer.analysis.dense_cost import memory_rows, saved_activation_bytes

    # Linear saves its input; ReLU saves its output; the second Linear saves the ReLU output (the same tensor).
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    total, square = saved_activation_bytes(model, torch.randn(11, 5, requires_grad=True), quadratic_side=7)
    assert total == 4 * (11 * 5 + 11 * 7) and square == 0
    rows = memory_rows("weightformer_tiny", [512, 1024])
    grow_ours = rows[1].weightformer_mib / rows[0].weightformer_mib
    grow_deit = rows[1].deit_mib / rows[0].deit_mib
    assert rows[1].tokens == 4 * rows[0].tokens == 4096
    assert grow_ours < 4.0 < 8.0 < grow_deit and rows[1].deit_fused_mib < rows[1].deit_mib
