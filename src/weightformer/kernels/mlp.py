"""The MLP's second half, fc2(GELU(h)), storing only h for the backward pass.

Autograd keeps two (tokens x 4C) activations per MLP for the reference `fc2(act(h))`: h, for GELU's derivative,
and GELU(h), fc2's input for its weight gradient. GELU is cheap to recompute, so this function saves h alone and
recomputes GELU(h) in the backward pass: a quarter less activation memory per block at the cost of one extra
elementwise pass. The forward computes exactly the reference's ops, so outputs and gradients are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gelu_linear"]


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # Under autocast F.linear casts its operands (to bf16, say); the backward repeats those casts by hand.
        out = F.linear(F.gelu(hidden), weight, bias)
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        compute = grad_out.dtype  # the dtype the forward's matmul ran in
        activated = F.gelu(hidden)  # recomputed: the activation that was not stored
        flat_grad = grad_out.flatten(0, -2)  # (N, D)
        grad_weight = flat_grad.t() @ activated.flatten(0, -2).to(compute)  # (D, K)
        grad_bias = flat_grad.sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
        grad_activated = (grad_out @ weight.to(compute)).to(hidden.dtype)  # (..., K)
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated, hidden)  # what autograd's GELU node runs
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias


def gelu_linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(F.gelu(hidden), weight, bias), keeping only `hidden` for the backward pass.

    hidden: (..., K), weight: (D, K), bias: (D,) or None -> (..., D). Without gradients there is nothing to
    save and the plain expression runs.
    """
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return F.linear(F.gelu(hidden), weight, bias)
    return _GeluLinear.apply(hidden, weight, bias)
