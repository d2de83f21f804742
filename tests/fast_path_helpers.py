"""Shared by the tests that hold the fast path to the reference path: random weights, and the comparison."""

from __future__ import annotations

import torch

from weightformer import kernels


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere, so no term of a formula can hide behind an init of zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


def assert_matches_reference_path(model, inputs, out, grads, params) -> None:
    """out = model(*inputs) and grads of out.square().sum() w.r.t. params, on the fast path: both equal the
    reference path's (`kernels.use_reference`) to fp32 rounding."""
    with kernels.use_reference():
        reference = model(*inputs)
        reference_grads = torch.autograd.grad(reference.square().sum(), params)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
    for g, r in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1))
