"""The CPU fast paths chosen by size or mode: factored vs formed dynamic-linear updates, fused inference MLPs."""

from __future__ import annotations

import pytest
import timm
import torch

from weightformer import kernels
from weightformer.layers import DynamicLinear


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("grid,factored", [((3, 9), True), ((12, 11), False)])
@pytest.mark.parametrize("predictor", ["bilateral", "deep", "query_pool"])
def test_dynamic_linear_factored_and_formed_updates_equal_reference(grid, factored, predictor):
    torch.manual_seed(0)
    layer = DynamicLinear(12, 20, predictor=predictor)
    _randomise(layer)
    x = torch.randn(3, *grid, 12, requires_grad=True)
    assert kernels.low_rank_dynamic_linear_preferred(x, 3, 5, 20) is factored
    params = [x, *layer.parameters()]
    y_fast = layer(x)
    g_fast = torch.autograd.grad(y_fast.square().sum(), params)
    with kernels.use_reference():
        y_ref = layer(x)
        g_ref = torch.autograd.grad(y_ref.square().sum(), params)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1))


def test_factored_update_has_finite_gradients_for_a_zero_update():
    layer = DynamicLinear(8, 16)
    with torch.no_grad():
        layer.predictor.output_basis.zero_()
    x = torch.randn(2, 4, 4, 8, requires_grad=True)
    grads = torch.autograd.grad(layer(x).sum(), [x, *layer.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_factored_update_is_not_used_in_bf16():
    assert not kernels.low_rank_dynamic_linear_preferred(torch.empty(2, 3, 3, 12, dtype=torch.bfloat16), 3, 5, 20)


def test_cpu_inference_with_fused_mlps_equals_reference():
    model = timm.create_model("weightformer_tiny", embed_dim=48, depth=5, num_classes=11).eval()
    _randomise(model, seed=3)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert model.blocks[0]._mlp_fusable(model.patch_embed(x)) is kernels.mlp_inference_fusable(
            model.blocks[0].mlp.act, model.blocks[0].mlp.fc2, x
        )
        logits = model(x)
        with kernels.use_reference():
            logits_ref = model(x)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4 * logits_ref.abs().max().item())


def test_fused_inference_mlp_is_not_used_while_recording_gradients_or_hooked():
    block = timm.create_model("weightformer_tiny", embed_dim=48, depth=2, num_classes=0).blocks[0].eval()
    x = torch.randn(2, 4, 4, 48)
    with torch.inference_mode():
        assert block._mlp_fusable(x) is kernels.mlp_inference_fusable(block.mlp.act, block.mlp.fc2, x)
    assert not block._mlp_fusable(x.requires_grad_())
    handle = block.mlp.fc2.register_forward_hook(lambda *args: None)
    with torch.inference_mode():
        assert not block._mlp_fusable(x.detach())
    handle.remove()


@pytest.mark.parametrize("grid", [(2, 2), (2, 3)])  # one pooled token and a wide output rank: rows via v W2 first
def test_factored_update_through_the_output_basis_first_equals_reference(grid):
    torch.manual_seed(0)
    layer = DynamicLinear(8, 64)
    _randomise(layer)
    x = torch.randn(2, *grid, 8, requires_grad=True)
    assert kernels.low_rank_dynamic_linear_preferred(x, 2, 16, 64)
    y_fast = layer(x)
    g_fast = torch.autograd.grad(y_fast.square().sum(), [x, *layer.parameters()])
    with kernels.use_reference():
        y_ref = layer(x)
        g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1))


@pytest.mark.parametrize("mixer", ["dwconv", "attention"])
def test_dit_cpu_inference_on_onednn_gemms_equals_reference_and_steps_aside_when_watched(mixer, monkeypatch):
    from weightformer import WeightFormerDiT

    calls = {"linear": 0, "linear_gelu": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(kernels, "linear_inference", counted("linear", kernels.linear_inference))
    monkeypatch.setattr(kernels.mlp, "linear_gelu_inference", counted("linear_gelu", kernels.mlp.linear_gelu_inference))
    model = WeightFormerDiT(input_size=6, patch_size=2, hidden_size=32, depth=4, num_classes=5, mixer=mixer,
                            num_heads=2).eval()
    _randomise(model, seed=5)
    gen = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(3, 4, 10, 6, generator=gen), torch.tensor([1, 500, 999]), torch.tensor([0, 4, 5])
    with torch.inference_mode():
        out = model(x, t, y)
        fast_calls = dict(calls)
        with kernels.use_reference():
            ref = model(x, t, y)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    static = 4 - len(model.dynamic_indices)
    # Every MLP's fc2 and the final linear (and attention's qkv and proj) on oneDNN; fc1 + GELU where fc1 is static.
    assert fast_calls == {"linear": 4 + 1 + (8 if mixer == "attention" else 0), "linear_gelu": static}
    assert calls == fast_calls  # the reference path called neither

    handle = model.blocks[0].mlp.fc2.register_forward_hook(lambda *args: None)
    with torch.inference_mode():
        model(x, t, y)
    handle.remove()
    assert calls["linear_gelu"] == 2 * static - 1  # the hooked MLP ran its modules
    model(x, t, y)  # gradients recorded: plain modules only
    assert calls["linear_gelu"] == 2 * static - 1


@pytest.mark.parametrize("grid", [(3, 9), (2, 2)])  # rows through the D_r x C_r sum, and through v W2 first
def test_factored_update_in_cpu_inference_on_onednn_gemms_equals_reference(grid, monkeypatch):
    calls = []
    onednn = kernels.mlp.linear_inference
    monkeypatch.setattr(kernels.mlp, "linear_inference", lambda *args: calls.append(args) or onednn(*args))
    torch.manual_seed(0)
    layer = DynamicLinear(8, 64 if grid == (2, 2) else 20)
    _randomise(layer)
    x = torch.randn(2, *grid, 8)
    assert kernels.low_rank_dynamic_linear_preferred(x, 2, layer.out_features // 4, layer.out_features)
    with torch.inference_mode():
        y_fast = layer(x)
        # through kernels.matmul_inference: x W1^T and the Gram product, and v W2 where rows go through it
        assert len(calls) == 2 + (grid == (2, 2))
        with kernels.use_reference():
            y_ref = layer(x)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["classifier", "dit"])
def test_in_place_gelu_leaves_a_hooked_dynamic_fc1_output_as_it_was(kind):
    from weightformer import WeightFormerDiT

    if kind == "classifier":
        model = timm.create_model("weightformer_tiny", embed_dim=48, depth=2, num_classes=3).eval()
        inputs = (torch.randn(2, 3, 64, 64),)
    else:
        model = WeightFormerDiT(input_size=8, patch_size=2, hidden_size=32, depth=2, num_classes=3).eval()
        inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 2]))
    fc1 = next(b.mlp.fc1 for b in model.blocks if b.dynamic)
    seen = []
    fc1.register_forward_hook(lambda module, args, out: seen.append((out, out.clone())))
    with torch.inference_mode():
        model(*inputs)
    held, copy = seen[0]
    torch.testing.assert_close(held, copy, rtol=0, atol=0)  # not overwritten by GELU
