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
