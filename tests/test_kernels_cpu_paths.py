"""The CPU fast paths chosen by size or mode: factored vs formed dynamic-linear updates, fused inference MLPs."""

from __future__ import annotations

import pytest
import timm
import torch

from fast_path_helpers import assert_matches_reference_path, randomise
from weightformer import kernels
from weightformer.layers import DynamicLinear


# (C, D, grid, dtype, the plan for the bilateral predictor's Np = 2x2-pooled tokens). Formed only in float64 here:
# on fp32 CPU tensors its per-sample GEMM is priced at half the static oneDNN GEMM's rate.
@pytest.mark.parametrize("features,grid,dtype,plan", [
    ((12, 20), (3, 9), torch.float32, "rows"), ((12, 20), (12, 11), torch.float32, "rows"),
    ((12, 20), (12, 11), torch.float64, "formed"), ((32, 64), (2, 3), torch.float32, "pooled"),
    ((32, 64), (5, 3), torch.float32, "pooled"),
])
@pytest.mark.parametrize("predictor", ["bilateral", "deep", "query_pool", "mean_max"])
def test_dynamic_linear_factored_and_formed_updates_equal_reference(features, grid, dtype, plan, predictor):
    torch.manual_seed(0)
    layer = DynamicLinear(*features, predictor=predictor).to(dtype)
    randomise(layer)
    x = torch.randn(3, *grid, features[0], dtype=dtype, requires_grad=True)
    if predictor in ("bilateral", "deep"):
        num_pooled = ((grid[0] + 1) // 2) * ((grid[1] + 1) // 2)
        assert kernels.dynamic_linear_plan(x, num_pooled, features[0] // 4, features[1] // 4, features[1]) == plan
    params = [x, *layer.parameters()]
    y_fast = layer(x)
    g_fast = torch.autograd.grad(y_fast.square().sum(), params)
    with kernels.use_reference():
        y_ref = layer(x)
        g_ref = torch.autograd.grad(y_ref.square().sum(), params)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1))


def test_dynamic_linear_plan_takes_the_cheapest_form_at_the_models_working_points():
    # (C, token grid side, plan) for fc1 (C -> 4C, Np = 2x2-pooled tokens): WeightFormer-T / -S at 224² and 448²,
    # WeightFormer-DiT-S/2 and -B/2 at latents 32 and 64
    for channels, side, plan in [(192, 14, "rows"), (384, 14, "pooled"), (192, 28, "rows"), (192, 56, "rows"),
                                 (384, 16, "pooled"), (768, 16, "pooled"), (384, 32, "rows")]:
        x = torch.empty(1, side, side, channels)
        num_pooled = ((side + 1) // 2) ** 2
        assert kernels.dynamic_linear_plan(x, num_pooled, channels // 4, channels, 4 * channels) == plan
        # without the CPU's GEMM-rate penalty the large grids form dW
        formed = side >= 28 and channels == 192 or side == 32
        assert (kernels.dynamic_linear_plan(x.double(), num_pooled, channels // 4, channels, 4 * channels)
                == ("formed" if formed else plan))


# (Np, C_r, D_r, D): few and many pooled tokens against the rank
@pytest.mark.parametrize("num_pooled,in_rank,out_rank,out_features", [(40, 3, 5, 20), (3, 7, 9, 11), (5, 3, 40, 6)])
@pytest.mark.parametrize("form", ["rows", "pooled"])
def test_factored_bounded_updates_equal_the_formed_bounded_update_in_float64(
    num_pooled, in_rank, out_rank, out_features, form
):
    gen = torch.Generator().manual_seed(num_pooled)
    in_features, scale = 13, 0.7
    u, v, w1, w2 = (torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
                    for shape in ((2, num_pooled, in_rank), (2, num_pooled, out_rank), (in_rank, in_features),
                                  (out_rank, out_features)))
    if form == "rows":
        update = kernels.low_rank_bounded_update(u, v, w1, w2, scale).transpose(1, 2) @ w1  # R W1: (B, D, C)
    else:
        values = kernels.pooled_bounded_update(u, v, w1, w2, scale)  # (B, Np, D)
        update = torch.einsum("bpd,bpr,rc->bdc", values, u, w1)  # E^T u W1
    formed = scale * torch.einsum("rd,bpr,bpc,ck->bdk", w2, v, u, w1)  # W2^T (v^T u) W1, straight
    reference = formed / (torch.linalg.vector_norm(formed, dim=-1, keepdim=True) + 1.0)
    torch.testing.assert_close(update, reference, rtol=1e-10, atol=1e-12)
    upstream = torch.randn(update.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((update * upstream).sum(), (u, v, w1, w2))
    reference_grads = torch.autograd.grad((reference * upstream).sum(), (u, v, w1, w2))
    for g, r in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("form", ["rows", "pooled"])
def test_factored_updates_applied_equal_the_formed_weight_in_float64(form):
    gen = torch.Generator().manual_seed(2)
    batch, height, width, in_features, out_features, num_pooled, in_rank = 2, 3, 5, 9, 7, 4, 3
    x = torch.randn(batch, height, width, in_features, generator=gen, dtype=torch.float64)
    w0, b, w1 = (torch.randn(*shape, generator=gen, dtype=torch.float64)
                 for shape in ((out_features, in_features), (out_features,), (in_rank, in_features)))
    u = torch.randn(batch, num_pooled, in_rank, generator=gen, dtype=torch.float64)
    if form == "rows":
        rows = torch.randn(batch, out_features, in_rank, generator=gen, dtype=torch.float64)
        y = kernels.apply_low_rank_dynamic_weight(x, w0, b, rows.transpose(1, 2), w1)
        weight = w0 + rows @ w1  # (B, D, C)
    else:
        values = torch.randn(batch, num_pooled, out_features, generator=gen, dtype=torch.float64)
        y = kernels.apply_pooled_dynamic_weight(x, w0, b, u, values, w1)
        weight = w0 + torch.einsum("bpd,bpr,rc->bdc", values, u, w1)
    torch.testing.assert_close(y, torch.einsum("bhwc,bdc->bhwd", x, weight) + b, rtol=1e-12, atol=1e-12)


def test_factored_update_has_finite_gradients_for_a_zero_update():
    layer = DynamicLinear(8, 16)
    with torch.no_grad():
        layer.predictor.output_basis.zero_()
    x = torch.randn(2, 4, 4, 8, requires_grad=True)
    grads = torch.autograd.grad(layer(x).sum(), [x, *layer.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_factored_update_is_not_used_in_bf16():
    x = torch.empty(2, 3, 3, 12, dtype=torch.bfloat16)
    assert kernels.dynamic_linear_plan(x, 4, 3, 5, 20) == "formed"
    assert kernels.dynamic_linear_plan(x.float(), 4, 3, 5, 20) != "formed"


def test_cpu_inference_with_fused_mlps_equals_reference():
    model = timm.create_model("weightformer_tiny", embed_dim=48, depth=5, num_classes=11).eval()
    randomise(model, seed=3)
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
    monkeypatch.setattr(kernels, "linear", counted("linear", kernels.linear))  # `_linear`'s GEMMs
    monkeypatch.setattr(kernels.mlp, "linear_gelu_inference", counted("linear_gelu", kernels.mlp.linear_gelu_inference))
    model = WeightFormerDiT(input_size=6, patch_size=2, hidden_size=32, depth=4, num_classes=5, mixer=mixer,
                            num_heads=2).eval()
    randomise(model, seed=5)
    gen = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(3, 4, 10, 6, generator=gen), torch.tensor([1, 500, 999]), torch.tensor([0, 4, 5])
    with torch.inference_mode():
        out = model(x, t, y)
        fast_calls = dict(calls)
        with kernels.use_reference():
            ref = model(x, t, y)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    static = 4 - len(model.dynamic_indices)
    # Every MLP's fc2 and the final linear (and attention's qkv and proj), and the dynamic layers' predictor
    # projections, on oneDNN; fc1 + GELU where fc1 is static.
    dynamic = len(model.dynamic_indices)
    assert fast_calls == {"linear": 4 + 1 + dynamic + (8 if mixer == "attention" else 0), "linear_gelu": static}
    assert calls == fast_calls  # the reference path called neither

    handle = model.blocks[0].mlp.fc2.register_forward_hook(lambda *args: None)
    with torch.inference_mode():
        model(x, t, y)
    handle.remove()
    assert calls["linear_gelu"] == 2 * static - 1  # the hooked MLP ran its modules
    model(x, t, y)  # gradients recorded: plain modules only
    assert calls["linear_gelu"] == 2 * static - 1


@pytest.mark.parametrize("grid", [(3, 9), (2, 2)])  # through rank-C_r rows, and through the pooled tokens
def test_factored_update_in_cpu_inference_on_onednn_gemms_equals_reference(grid, monkeypatch):
    calls = []
    onednn = kernels.mlp.linear_inference
    monkeypatch.setattr(kernels.mlp, "linear_inference", lambda *args: calls.append(args) or onednn(*args))
    torch.manual_seed(0)
    layer = DynamicLinear(8, 64 if grid == (2, 2) else 20)
    randomise(layer)
    x = torch.randn(2, *grid, 8)
    num_pooled = ((grid[0] + 1) // 2) * ((grid[1] + 1) // 2)
    plan = kernels.dynamic_linear_plan(x, num_pooled, 2, layer.out_features // 4, layer.out_features)
    assert plan == ("pooled" if grid == (2, 2) else "rows")
    with torch.inference_mode():
        y_fast = layer(x)
        # the predictor's projection, the static part x W0^T, and through kernels.matmul: x W1^T and v W2 (rows:
        # (u^T v) W2), and u G for the pooled form
        assert len(calls) == 4 + (plan == "pooled")
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


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
def test_onednn_linear_in_training_matches_a_float64_reference(bias, input_grad):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 7, 13, generator=gen).requires_grad_(input_grad)
    weight = torch.randn(11, 13, generator=gen).requires_grad_()
    b = torch.randn(11, generator=gen).requires_grad_() if bias else None
    upstream = torch.randn(3, 5, 7, 11, generator=gen)
    assert kernels.onednn_training(x, weight)
    y = kernels.linear(x, weight, b)
    assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"  # the oneDNN path ran, not F.linear
    params = [t for t in (x, weight, b) if t is not None and t.requires_grad]
    grads = torch.autograd.grad((y * upstream).sum(), params)
    ref_params = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
                  for t in (x, weight, b)]
    y_ref = torch.einsum("...c,dc->...d", ref_params[0], ref_params[1])
    if bias:
        y_ref = y_ref + ref_params[2]
    wanted = [r for r in ref_params if r is not None and r.requires_grad]
    grads_ref = torch.autograd.grad((y_ref * upstream.double()).sum(), wanted)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_onednn_linear_supports_double_backward_and_steps_aside_where_it_must():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    weight = torch.randn(5, 6, generator=gen, requires_grad=True)
    # A gradient penalty: d/dW ||dL/dx||^2 needs the backward itself to be differentiable.
    grads = []
    for fn in (kernels.linear, torch.nn.functional.linear):
        (gx,) = torch.autograd.grad(fn(x, weight, None).tanh().sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum(), weight)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    assert not kernels.onednn_training(x.double(), weight.double())  # float64: F.linear
    assert not kernels.onednn_training(x.detach(), weight.detach())  # nothing to differentiate
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.onednn_training(x, weight)
    assert type(kernels.linear(x.double(), weight.double(), None).grad_fn).__name__ != "_OneDNNLinearBackward"


@pytest.mark.parametrize("mixer", ["dwconv", "attention"])
def test_dit_training_on_onednn_gemms_equals_reference_for_both_mixers(mixer, monkeypatch):
    from weightformer import WeightFormerDiT

    calls = []
    onednn = kernels.linear
    monkeypatch.setattr(kernels, "linear", lambda *args: calls.append(args) or onednn(*args))
    model = WeightFormerDiT(input_size=6, patch_size=2, hidden_size=32, depth=4, num_classes=5, mixer=mixer,
                            num_heads=2, class_dropout_prob=0.0)  # training mode, no random label drops
    randomise(model, seed=6)
    gen = torch.Generator().manual_seed(2)
    x, t, y = torch.randn(3, 4, 10, 6, generator=gen), torch.tensor([3, 400, 998]), torch.tensor([1, 0, 4])
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x, t, y)
    # Both mixers' plain linear layers (MLPs, final layer; attention's qkv and proj) and the dynamic layers'
    # predictor projections run through kernels.linear.
    static = 4 - len(model.dynamic_indices)
    assert len(calls) == 2 * static + 2 * len(model.dynamic_indices) + 1 + (8 if mixer == "attention" else 0)
    grads = torch.autograd.grad(out.square().sum(), params)
    assert_matches_reference_path(model, (x, t, y), out, grads, params)


def test_classifier_training_on_onednn_gemms_equals_reference(monkeypatch):
    calls, fused, weight_grads = [], [], []
    onednn, gemm, weight_grad = kernels.linear, kernels.mlp._onednn_gemm, kernels.mlp._onednn_weight_grad
    monkeypatch.setattr(kernels, "linear", lambda *args: calls.append(args) or onednn(*args))
    monkeypatch.setattr(kernels.mlp, "_onednn_gemm", lambda *args: fused.append(args) or gemm(*args))
    monkeypatch.setattr(kernels.mlp, "_onednn_weight_grad", lambda *a: weight_grads.append(a) or weight_grad(*a))
    model = timm.create_model("weightformer_tiny", embed_dim=24, depth=4, num_classes=3, img_size=64)
    randomise(model, seed=8)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(x).logsumexp(-1).sum(), params)
    static = 4 - len(model.dynamic_indices)
    dynamic = len(model.dynamic_indices)
    assert len(calls) == static + dynamic  # every static fc1 and predictor projection; fc2 runs in the fused GELU + fc2
    # A forward and an input-gradient GEMM (and a weight gradient) each: fc1 and fc2 of each static MLP; fc2, W0,
    # the predictor's projection and the rank-C/4 products x W1^T and (u^T v) W2 of each dynamic one (the update
    # through its rank-C/4 rows here: `kernels.dynamic_linear_plan`).
    assert kernels.dynamic_linear_plan(torch.empty(2, 4, 5, 24), 6, 6, 24, 96) == "rows"
    assert len(fused) == 2 * 2 * static + 2 * 5 * dynamic
    assert len(weight_grads) == len(fused) // 2  # each product's weight gradient on oneDNN too
    with kernels.use_reference():
        grads_ref = torch.autograd.grad(model(x).logsumexp(-1).sum(), params)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1))
