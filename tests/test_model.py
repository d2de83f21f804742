"""The WeightFormer classifier: sizes, costs, the timm interface, odd inputs, errors, receptive field."""
from __future__ import annotations

import pytest
import torch

import weightformer
from weightformer import WeightFormer
from weightformer.analysis.flops import count_macs


def small_model(**kwargs) -> WeightFormer:
    """A WeightFormer small enough for CPU tests: width 32, depth 5 (dynamic blocks 1 and 4), patch 8."""
    args = dict(embed_dim=32, depth=5, patch_size=8, num_classes=7)
    args.update(kwargs)
    return WeightFormer(**args)


# -- sizes and costs (README "Models") -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params_m,gmacs,size",
    [
        ("weightformer_tiny", 7.07, 1.13, 224),
        ("weightformer_small", 27.49, 4.44, 224),
        ("weightformer_base", 27.49, 17.70, 448),
    ],
)
def test_parameter_count_and_macs_match_the_paper(name, params_m, gmacs, size):
    with torch.device("meta"):  # sizes and costs need no memory and no values
        model = weightformer.create_model(name)
    assert model.img_size == (size, size)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    assert count_macs(model, (3, size, size)).gmacs == pytest.approx(gmacs, rel=0.01)


@pytest.mark.parametrize("name", ["weightformer_tiny", "weightformer_small", "weightformer_base"])
def test_cost_is_linear_in_pixels(name):
    with torch.device("meta"):
        model = weightformer.create_model(name)
    ratio = count_macs(model, (3, 448, 448)).total / count_macs(model, (3, 224, 224)).total
    assert ratio == pytest.approx(4.0, abs=0.1)


def test_dynamic_blocks_sit_at_every_third_block():
    with torch.device("meta"):
        model = weightformer.create_model("weightformer_tiny")
    assert model.dynamic_indices == (1, 4, 7, 10, 13, 16)
    kinds = [block.dynamic for block in model.blocks]
    assert kinds == [(i + 2) % 3 == 0 for i in range(17)]
    assert small_model(dynamic_blocks="none").dynamic_indices == ()
    assert small_model(dynamic_blocks="all").dynamic_indices == (0, 1, 2, 3, 4)
    assert small_model(dynamic_blocks=[0, 3]).dynamic_indices == (0, 3)
    with pytest.raises(ValueError, match="out of range"):
        small_model(dynamic_blocks=[5])


def test_initialisation_follows_the_release():
    model = small_model()
    dynamic = model.blocks[1]
    static = model.blocks[0]
    # The dynamic linear's bias is truncated-normal (not zero); nn.Linear biases are zero.
    assert dynamic.mlp.fc1.bias.abs().sum() > 0
    assert static.mlp.fc1.bias.abs().sum() == 0
    assert dynamic.mlp.fc1.predictor.proj.bias.abs().sum() == 0
    for w in (dynamic.mlp.fc1.weight, static.mlp.fc1.weight, model.head.weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.equal(model.norm.weight, torch.ones(32))


# -- shapes, odd inputs, the timm interface ------------------------------------------------------------------


@pytest.mark.parametrize("size", [(224, 320), (336, 336), (208, 240), (112, 48)])
def test_any_multiple_of_the_patch_size_works(size):
    model = small_model(patch_size=16).eval()
    x = torch.randn(2, 3, *size)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    features = model.forward_features(x)
    assert features.shape == (2, size[0] // 16, size[1] // 16, 32)


def test_large_non_square_input():
    model = weightformer.create_model("weightformer_tiny", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 800, 1216)).shape == (1, 3)


def test_odd_grid_pooling_uses_the_last_row_and_column():
    # 13x15 token grid: the reference code would ignore row 12 and column 14 in the dynamic linear's
    # statistics; ours keeps them, so perturbing the last token changes the predicted weight update.
    torch.manual_seed(0)
    layer = small_model().blocks[1].mlp.fc1
    x = torch.randn(1, 13, 15, 32)
    y = x.clone()
    y[0, 12, 14] += 1.0
    assert not torch.allclose(layer.predictor(x), layer.predictor(y))


def test_forward_head_and_classifier_reset():
    torch.manual_seed(0)
    model = small_model().eval()
    x = torch.randn(2, 3, 48, 40)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features.mean(dim=(1, 2)))
    torch.testing.assert_close(model.forward_head(features), model.head(pooled))
    assert model.get_classifier() is model.head
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 6, 5, 32)


def test_forward_intermediates_formats_and_indices():
    torch.manual_seed(0)
    model = small_model().eval()
    x = torch.randn(2, 3, 48, 64)
    final, inter = model.forward_intermediates(x, indices=[0, 2, 4])
    assert len(inter) == 3 and inter[0].shape == (2, 32, 6, 8)
    torch.testing.assert_close(final, model.forward_features(x))
    nhwc = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True)
    assert [t.shape for t in nhwc] == [(2, 6, 8, 32)] * 2
    torch.testing.assert_close(nhwc[1].permute(0, 3, 1, 2), inter[2])  # the last two are blocks 3 and 4
    nlc = model.forward_intermediates(x, indices=[4], output_fmt="NLC", norm=True, intermediates_only=True)
    torch.testing.assert_close(nlc[0], final.flatten(1, 2))
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], model.blocks[:2](model.patch_embed(x)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="CHW")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = small_model(drop_path_rate=0.0)
    x = torch.randn(2, 3, 40, 48)
    model(x).logsumexp(-1).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


def test_drop_path_rates_increase_linearly():
    model = small_model(drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_group_matcher_and_no_weight_decay():
    import re

    model = small_model()
    matcher = model.group_matcher()
    assert re.match(matcher["stem"], "patch_embed.proj.weight")
    assert re.match(matcher["blocks"][0][0], "blocks.3.mlp.fc1.weight").group(1) == "3"
    assert model.no_weight_decay() == set()


# -- receptive field (the paper's effective-receptive-field argument) ----------------------------------------


@pytest.mark.parametrize("placement,global_field", [("sparse", True), ("none", False)])
def test_global_receptive_field_at_initialisation(placement, global_field):
    # 4 blocks of 3x3 mixing reach 4 tokens; the far corner of a 13x13 grid is 6 tokens from the centre.
    torch.manual_seed(0)
    model = WeightFormer(embed_dim=24, depth=4, patch_size=4, num_classes=0, dynamic_blocks=placement).double()
    x = torch.randn(1, 3, 52, 52, dtype=torch.float64, requires_grad=True)
    readout = torch.randn(24, dtype=torch.float64)  # not a plain sum: LayerNorm outputs sum to a constant
    (model.forward_features(x)[0, 6, 6] * readout).sum().backward()
    corner = x.grad[0, :, 0, 0].abs().sum().item()
    if global_field:
        assert corner > 1e-8
    else:
        assert corner == 0.0
    assert x.grad[0, :, 26, 26].abs().sum() > 0  # the centre pixel always matters


# -- errors --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors():
    model = small_model(patch_size=16)
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\); got a 3-D tensor"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="3-channel images but the input has 1 channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of the patch size 16; got 225x224"):
        model(torch.randn(1, 3, 225, 224))
    with pytest.raises(ValueError, match="too small.*at least 3x3 tokens"):
        model(torch.randn(1, 3, 32, 64))
    # A fully static network has no pooling to feed: small grids are fine.
    assert small_model(patch_size=16, dynamic_blocks="none")(torch.randn(1, 3, 16, 32)).shape == (1, 7)
    with pytest.raises(ValueError, match="Unknown model"):
        weightformer.create_model("weightformer_huge")
