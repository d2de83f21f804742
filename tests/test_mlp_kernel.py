"""The MLP's fc2(GELU(h)) fast path: the reference's numbers, without storing GELU(h) for the backward pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weightformer.kernels import gelu_linear


def _grads(fn, hidden, weight, bias, grad_out):
    hidden, weight, bias = (t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias))
    out = fn(hidden, weight, bias)
    out.backward(grad_out)
    return out.detach(), hidden.grad, weight.grad, bias.grad


def _reference(hidden, weight, bias):
    return F.linear(F.gelu(hidden), weight, bias)


@pytest.mark.parametrize("shape", [(3, 5, 7, 12), (2, 11, 20)])
def test_gelu_linear_matches_reference_in_float64(shape):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(9, shape[-1], generator=gen, dtype=torch.float64)
    bias = torch.randn(9, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(*shape[:-1], 9, generator=gen, dtype=torch.float64)
    for ours, ref in zip(_grads(gelu_linear, hidden, weight, bias, grad_out),
                         _grads(_reference, hidden, weight, bias, grad_out), strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_gelu_linear_in_float32_on_onednn_matches_a_float64_reference(monkeypatch):
    from weightformer.kernels import mlp

    calls = []
    weight_grad = mlp._onednn_weight_grad
    monkeypatch.setattr(mlp, "_onednn_weight_grad", lambda *args: calls.append(args) or weight_grad(*args))
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 7, 13, generator=gen)
    weight = torch.randn(11, 13, generator=gen)
    bias = torch.randn(11, generator=gen)
    grad_out = torch.randn(3, 7, 11, generator=gen)
    ours = _grads(gelu_linear, hidden, weight, bias, grad_out)
    assert len(calls) == 1  # fp32 CPU: the weight and bias gradients came from oneDNN's inner-product backward
    ref = _grads(_reference, *(t.double() for t in (hidden, weight, bias, grad_out)))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_gelu_linear_under_bf16_autocast_matches_reference():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 16, generator=gen)
    weight = torch.randn(8, 16, generator=gen) * 0.1
    bias = torch.randn(8, generator=gen)
    grad_out = torch.randn(4, 6, 8, generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _grads(gelu_linear, hidden, weight, bias, grad_out)
        ref = _grads(_reference, hidden, weight, bias, grad_out)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    assert ours[2].dtype == torch.float32  # parameter gradients come back in the parameters' dtype


def _saved_bytes(fn, hidden, weight, bias) -> int:
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(hidden, weight, bias)
    # Count each storage once: parameters and the input are shared with the caller.
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    return sum(unique.values())


def test_gelu_linear_stores_one_hidden_activation_less():
    hidden = torch.randn(2, 50, 64, requires_grad=True)
    weight = torch.randn(16, 64, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    activation_bytes = hidden.numel() * hidden.element_size()
    difference = _saved_bytes(_reference, hidden, weight, bias) - _saved_bytes(gelu_linear, hidden, weight, bias)
    assert difference == activation_bytes


# -- under torch.compile on CPU: the custom op weightformer::onednn_gelu_linear ----------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("hidden_grad", [True, False])
def test_compiled_gelu_linear_op_matches_a_float64_reference(with_bias, hidden_grad):
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 7, 13, requires_grad=hidden_grad)
    weight = torch.randn(11, 13, requires_grad=True)
    bias = torch.randn(11, requires_grad=True) if with_bias else None
    inputs = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    out = torch.ops.weightformer.onednn_gelu_linear(hidden, weight, bias)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    as64 = {id(t): t.detach().double().requires_grad_(t.requires_grad) for t in (hidden, weight, bias) if t is not None}
    reference = _reference(as64[id(hidden)], as64[id(weight)], None if bias is None else as64[id(bias)])
    reference_grads = torch.autograd.grad(reference, [as64[id(t)] for t in inputs], grad_out.double())
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.weightformer.onednn_gelu_linear.default, (hidden, weight, bias))


def test_compiled_gelu_linear_keeps_only_the_hidden_activation_for_the_backward_pass():
    # Inductor's partitioner (here without code generation) would keep GELU(h) too if the op read it in backward.
    torch.manual_seed(0)
    x = torch.randn(2, 9, 12, requires_grad=True)
    w1, w2, b2 = torch.randn(40, 12), torch.randn(6, 40, requires_grad=True), torch.randn(6, requires_grad=True)

    def mlp(x):
        return gelu_linear(F.linear(x, w1), w2, b2)  # h = x W1^T is made inside the graph

    saved = []
    torch._dynamo.reset()
    compiled = torch.compile(mlp, backend="aot_eager_decomp_partition", fullgraph=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = compiled(x)
    hidden_sized = [t for t in saved if t.numel() == 2 * 9 * 40]  # (2, 9, 40) or flattened
    assert len(hidden_sized) == 1, [tuple(t.shape) for t in saved]  # h, not GELU(h) besides
    grads = torch.autograd.grad(out.sum(), (x, w2, b2))
    x64, w2_64, b2_64 = (t.detach().double().requires_grad_() for t in (x, w2, b2))
    reference = _reference(F.linear(x64, w1.double()), w2_64, b2_64)
    for g, r in zip(grads, torch.autograd.grad(reference.sum(), (x64, w2_64, b2_64)), strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)
