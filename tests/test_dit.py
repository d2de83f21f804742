"""WeightFormer-DiT (README "Generation (WeightFormer-DiT)"): the release's checkpoints give the float64
reference's outputs, on any latent grid."""

from __future__ import annotations

import pytest
import torch

import weightformer
from dit_reference import dit_forward_ref, dit_release_state_dict, pos_embed_ref
from weightformer import (
    CheckpointMismatchError,
    WeightFormerDiT,
    dit_checkpoint_filter_fn,
    kernels,
    load_dit_checkpoint,
)
from weightformer.models.dit import DiTBlock, sincos_pos_embed_2d

SMALL = dict(input_size=8, patch_size=2, hidden_size=48, depth=4, num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def _model(dtype=torch.float64, **kwargs) -> WeightFormerDiT:
    return WeightFormerDiT(**{**SMALL, **kwargs}).to(dtype).eval()


def _batch(size, dtype=torch.float64, seed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, *size, generator=gen, dtype=dtype)
    return x, torch.tensor([0, 417, 999]), torch.tensor([3, 10, 0])  # label 10: "no class"


@pytest.fixture(scope="module")
def release64():
    return dit_release_state_dict(hidden=48, depth=4, patch=2, dtype=torch.float64, seed=1)


@pytest.mark.parametrize("size", [(6, 10), (8, 8)])
@pytest.mark.parametrize("reference_path", [False, True])
def test_release_state_dict_gives_the_reference_output(release64, size, reference_path):
    # hidden 48, depth 4 (block 1 dynamic), patch 2: a 3x5 (odd, non-square) and a 4x4 token grid.
    x, t, y = _batch(size)
    expected = dit_forward_ref(release64, x, t, y, patch=2)
    model64 = load_dit_checkpoint(_model(), release64)
    model32 = load_dit_checkpoint(_model(torch.float32), {k: v.float() for k, v in release64.items()})
    with kernels.use_reference(reference_path), torch.no_grad():
        out64 = model64(x, t, y)
        out32 = model32(x.float(), t, y).double()
    scale = expected.abs().max()
    torch.testing.assert_close(out64, expected, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(out32, expected, rtol=1e-5, atol=1e-5 * scale)
    assert out64.shape == (3, 8, *size)


def test_pos_embed_is_dits_sincos_for_any_grid():
    for height, width in [(3, 5), (4, 4), (7, 2)]:
        torch.testing.assert_close(sincos_pos_embed_2d(16, height, width), pos_embed_ref(16, height, width),
                                   rtol=1e-12, atol=1e-12)


def test_fast_dit_checkpoint_takes_ema_by_default_and_model_on_request(tmp_path):
    ema = dit_release_state_dict(hidden=48, depth=4, patch=2, seed=3)
    raw = dit_release_state_dict(hidden=48, depth=4, patch=2, seed=4)
    torch.save({"model": raw, "ema": ema, "opt": {}, "args": None}, tmp_path / "0400000.pt")
    kwargs = dict(SMALL, input_size=32)
    model = weightformer.create_model("weightformer_dit_s_2", checkpoint_path=tmp_path / "0400000.pt", **kwargs)
    assert torch.equal(model.x_embedder.proj.weight, ema["x_embedder.proj.weight"])
    assert torch.equal(model.blocks[1].mlp.fc1.weight, ema["blocks.1.linear1.w"].t())  # input-major W0
    trained = weightformer.create_model("weightformer_dit_s_2", checkpoint_path=tmp_path / "0400000.pt",
                                        use_ema=False, **kwargs)
    assert torch.equal(trained.final_layer.linear.weight, raw["final_layer.linear.weight"])


def test_every_release_key_has_a_home_and_pos_embed_is_checked():
    sd = dit_release_state_dict(hidden=48, depth=4, patch=2, pos_grid=4)
    assert set(dit_checkpoint_filter_fn(sd)) == set(_model().state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 0.01  # a learned position embedding: not this architecture
    with pytest.raises(CheckpointMismatchError, match=r"^ckpt\.pt: pos_embed differs from DiT's fixed sin-cos"):
        dit_checkpoint_filter_fn(sd, origin="ckpt.pt")


def test_checkpoint_of_another_architecture_is_named_in_one_line(tmp_path):
    torch.save(dit_release_state_dict(hidden=48, depth=4, patch=4), tmp_path / "patch4.pt")
    model = _model(torch.float32)
    before = model.final_layer.adaLN_modulation[1].weight.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_dit_checkpoint(model, tmp_path / "patch4.pt")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "patch4.pt") in message
    assert "wrong shape: x_embedder.proj.weight: checkpoint (48, 4, 4, 4) vs model (48, 4, 2, 2)" in message
    assert torch.equal(model.final_layer.adaLN_modulation[1].weight, before)  # nothing loaded
    classifier = weightformer.WeightFormer(embed_dim=48, depth=4, num_classes=10).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"missing: x_embedder\.proj\.weight.*unexpected: patch_embed"):
        load_dit_checkpoint(model, classifier)


def test_forward_with_cfg_is_its_definition(release64):
    model = load_dit_checkpoint(_model(), release64)
    x, t, y = _batch((6, 10))
    x, t = torch.cat([x[:2], x[:2]]), torch.cat([t[:2], t[:2]])
    y = torch.tensor([3, 7, 10, 10])
    with torch.no_grad():
        cond = model(x[:2], t[:2], y[:2])
        uncond = model(x[:2], t[2:], y[2:])
        for channels in (3, 4):  # DiT's release guides 3 of the 4 latent channels; 4 is the standard form
            out = model.forward_with_cfg(x, t, y, cfg_scale=4.0, guided_channels=channels)
            guided = uncond[:, :channels] + 4.0 * (cond[:, :channels] - uncond[:, :channels])
            torch.testing.assert_close(out[:2, :channels], guided, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out[2:, :channels], guided, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out[:2, channels:], cond[:, channels:], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out[2:, channels:], uncond[:, channels:], rtol=1e-12, atol=1e-12)


def test_labels_are_dropped_only_in_training(release64):
    model = load_dit_checkpoint(_model(class_dropout_prob=1.0), release64)
    x, t, y = _batch((8, 8))
    y = torch.tensor([3, 5, 0])
    null = torch.full_like(y, 10)
    with torch.no_grad():
        conditional, unconditional = model(x, t, y), model(x, t, null)
        model.train()
        dropped = model(x, t, y)
    assert not torch.allclose(conditional, unconditional)
    torch.testing.assert_close(dropped, unconditional, rtol=0, atol=0)
    half = WeightFormerDiT(**SMALL, class_dropout_prob=0.5).train()
    torch.manual_seed(0)
    labels = half.y_embedder.token_drop(torch.zeros(4000, dtype=torch.long))
    assert set(labels.tolist()) == {0, 10} and abs((labels == 10).float().mean().item() - 0.5) < 0.03


def test_bad_inputs_raise_one_line_value_errors():
    model = _model(torch.float32)
    x, t, y = _batch((8, 8), torch.float32)
    cases = [
        (torch.randn(3, 4, 7, 8), t, y, r"multiples of the patch size 2; got 7x8"),
        (x, t, torch.tensor([3, 11, 0]), r"Class ids must lie in 0\.\.10 \(num_classes=10, the last means no class\)"),
        (x, t, torch.tensor([-1, 0, 0]), r"got -1\.\.0"),
        (torch.randn(3, 3, 8, 8), t, y, r"latents of shape \(batch, 4, height, width\)"),
        (torch.randn(3, 4, 4, 4), t, y, r"2x2 token grid; the dynamic layers need at least 3x3"),
        (x, t[:2], y, r"t and y must have shape \(3,\)"),
    ]
    for latents, steps, labels, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            model(latents, steps, labels)
        assert "\n" not in str(info.value)
    no_cfg = WeightFormerDiT(**SMALL, class_dropout_prob=0.0)  # no "no class" row without label dropout
    with pytest.raises(ValueError, match=r"0\.\.9 \(num_classes=10\); got 0\.\.10"):
        no_cfg(x, t, y)


def test_initialisation_is_dits_with_the_dynamic_layers_own():
    model = WeightFormerDiT(**SMALL)
    x, t, y = _batch((8, 8), torch.float32)
    assert torch.equal(model(x, t, y), torch.zeros(3, 8, 8, 8))  # adaLN-Zero and zeroed output layer
    assert model.out_channels == 8 and WeightFormerDiT(**SMALL, learn_sigma=False).out_channels == 4
    proj = model.blocks[1].mlp.fc1.predictor.proj.weight  # predictor projection: truncated normal 0.02, not xavier
    assert 0.015 < proj.std().item() < 0.025
    static = model.blocks[0].mlp.fc1.weight  # a static FC1: xavier uniform, bound sqrt(6 / (48 + 192))
    assert static.abs().max().item() <= (6 / 240) ** 0.5 and static.std().item() > 0.08
    assert model.blocks[1].mlp.fc1.bias.abs().sum() > 0  # the dynamic linear's b is not zero (release's wfm.py)
    table = model.y_embedder.embedding_table.weight
    assert table.shape == (11, 48) and 0.015 < table.std().item() < 0.025


def test_variants_are_built_by_name():
    assert "weightformer_dit_s_2" not in weightformer.list_models()
    assert weightformer.list_models("dit") == [f"dit_attn_{s}_{p}" for s in "bs" for p in (2, 4)] + [
        f"weightformer_dit_{s}_{p}" for s in "bs" for p in (2, 4, 8)]
    with torch.device("meta"):
        model = weightformer.create_model("weightformer_dit_b_4")
    assert (model.hidden_size, len(model.blocks), model.patch_size) == (768, 15, 4)
    assert model.dynamic_indices == (1, 4, 7, 10, 13)
    with pytest.raises(ValueError, match="No pretrained weights"):
        weightformer.create_model("weightformer_dit_s_2", pretrained=True)


@pytest.mark.parametrize("size", [(6, 10), (8, 8)])
def test_the_attention_baseline_is_dits_block_with_sdpa(size):
    # DiT's pre-norm block with multi-head SDPA (3 heads of 16), no dynamic layers, against per-head einsum.
    model = _model(mixer="attention", num_heads=3)
    for p in model.parameters():  # adaLN-Zero would make every block the identity
        torch.nn.init.normal_(p, std=0.1)
    x, t, y = _batch(size)
    expected = dit_forward_ref(model.state_dict(), x, t, y, patch=2, heads=3)
    with torch.no_grad():
        out = model(x, t, y)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12 * expected.abs().max())
    assert model.dynamic_indices == () and not any("dynamic" in type(m).__name__.lower() for m in model.modules())
    baseline = weightformer.create_model("dit_attn_s_2", input_size=8, num_classes=10)
    assert len(baseline.blocks) == 15 and baseline.hidden_size == 384 and baseline.blocks[0].token_mixer.num_heads == 6
    with pytest.raises(ValueError, match="mixer must be 'dwconv' or 'attention'"):
        _model(mixer="conv")


def _randomize_conditioning(module: torch.nn.Module) -> None:
    """adaLN-Zero starts every gate at 0 (a block is the identity at init), and predictors may start their output
    at 0 too: give every zero parameter something to pass."""
    for param in module.parameters():
        if param.abs().sum() == 0:
            torch.nn.init.normal_(param, std=0.2)


@pytest.mark.parametrize("linear, conv", [("normalized", "adaptive"), ("agent", "query_pool"), ("bilateral", "gap")])
def test_predictor_options_reach_every_dynamic_block_and_only_those(linear, conv):
    model = _model(linear_predictor=linear, conv_predictor=conv)
    for i, block in enumerate(model.blocks):
        if i in model.dynamic_indices:
            assert (block.mlp.fc1.predictor_name, block.token_mixer.predictor_name) == (linear, conv)
        else:
            assert type(block.mlp.fc1) is torch.nn.Linear and not hasattr(block.token_mixer, "predictor_name")
    with pytest.raises(ValueError, match="Unknown dynamic linear predictor 'nope'"):
        _model(linear_predictor="nope")
    with pytest.raises(ValueError, match="Unknown dynamic conv predictor 'nope'"):
        _model(conv_predictor="nope")


@pytest.mark.parametrize("linear", ["normalized", "agent"])
def test_dynamic_block_with_another_predictor_sees_the_whole_grid_in_one_step(linear):
    """One token at a corner changes the opposite corner after one dynamic block (its predictors pool the whole
    grid), never after a static one (a 3x3 conv reaches one token away)."""
    torch.manual_seed(0)
    blocks = {kind: DiTBlock(48, dynamic=kind == "dynamic", linear_predictor=linear).double().eval()
              for kind in ("dynamic", "static")}
    x = torch.randn(2, 7, 9, 48, dtype=torch.float64)
    c = torch.randn(2, 48, dtype=torch.float64)
    moved = x.clone()
    moved[:, 0, 0] = torch.randn(2, 48, dtype=torch.float64)  # (not a constant shift: LN1 would remove it)
    for kind, block in blocks.items():
        _randomize_conditioning(block)
        far = (block(moved, c) - block(x, c))[:, -1, -1].abs().max().item()
        assert (far > 1e-6) == (kind == "dynamic"), (kind, far)


def test_generation_checkpoint_keeps_its_predictor(tmp_path):
    from gen_helpers import write_dit_checkpoint
    from weightformer.tasks.loader import load_run_model

    path = write_dit_checkpoint(tmp_path / "dit.pth", linear_predictor="normalized")
    model = load_run_model(path, "generation").model
    assert {b.mlp.fc1.predictor_name for b in model.blocks if b.dynamic} == {"normalized"}
    saved = torch.load(path, weights_only=False)["ema"]
    assert all(torch.equal(v, saved[f"module.{k}"]) for k, v in model.state_dict().items())
