"""Triton kernels for the 3x3 depthwise convolution of WeightFormer, per-sample or shared kernel.

One pass computes, on channels-last tokens x (B, H, W, C),

    y[b, h, w, c] = bias[c] + sum_{i, j} x[b, h + i - 1, w + j - 1, c] * K[b, c, i, j]  (+ x[b, h, w, c])

with zero padding, fp32 accumulation and the output in x's dtype: the nine taps, the bias and the block's
residual add in one read of x and one write of y. K is (B, C, 3, 3) for the dynamic conv (one kernel per sample)
or (C, 3, 3) for the static one (read with a zero batch stride). The backward pass reuses the forward kernel for
dx (a 3x3 correlation with the taps flipped) and one reduction kernel for dK; dbias is a plain sum.

The ops are registered with `torch.library.triton_op`, so `torch.compile` sees through them (no graph break)
and CUDA graphs can capture them. This module imports triton at import time; `weightformer.kernels` guards it.
Set TRITON_INTERPRET=1 before importing it to run the kernels on CPU tensors with Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

__all__ = ["dwconv3x3"]

_BLOCK_P = 64  # pixels per program
_BLOCK_C = 64  # channels per program


@triton.jit
def _dwconv3x3_fwd_kernel(
    x_ptr,
    k_ptr,
    b_ptr,
    y_ptr,
    H,
    W,
    C,
    stride_kb,
    HAS_BIAS: tl.constexpr,
    RESIDUAL: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # flat pixel index h * W + w
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    h = offs_p // W
    w = offs_p % W
    x_base = x_ptr + pid_b * H * W * C
    k_base = k_ptr + pid_b * stride_kb + offs_c * 9
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            hh = h + (i - 1)
            ww = w + (j - 1)
            inside = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            ptrs = x_base + (hh * W + ww)[:, None] * C + offs_c[None, :]
            xv = tl.load(ptrs, mask=inside[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            kv = tl.load(k_base + (i * 3 + j), mask=mask_c, other=0.0).to(tl.float32)
            acc += xv * kv[None, :]
    mask = mask_p[:, None] & mask_c[None, :]
    offs = offs_p[:, None] * C + offs_c[None, :]
    if RESIDUAL:
        acc += tl.load(x_base + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + pid_b * H * W * C + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dwconv3x3_wgrad_kernel(
    x_ptr,
    dy_ptr,
    part_ptr,
    H,
    W,
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # part[b, pid_p, t, c] = sum over this program's pixels of dy[b, p, c] * x[b, p shifted by tap t, c]
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    num_pb = tl.num_programs(0)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    h = offs_p // W
    w = offs_p % W
    base = pid_b * H * W * C
    dy = tl.load(
        dy_ptr + base + offs_p[:, None] * C + offs_c[None, :], mask=mask_p[:, None] & mask_c[None, :], other=0.0
    ).to(tl.float32)
    part_base = part_ptr + ((pid_b * num_pb + pid_p) * 9) * C + offs_c
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            hh = h + (i - 1)
            ww = w + (j - 1)
            inside = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            ptrs = x_ptr + base + (hh * W + ww)[:, None] * C + offs_c[None, :]
            xv = tl.load(ptrs, mask=inside[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            tl.store(part_base + (i * 3 + j) * C, tl.sum(xv * dy, axis=0), mask=mask_c)


def _launch_forward(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, residual: bool) -> torch.Tensor:
    batch, height, width, channels = x.shape
    y = torch.empty_like(x)
    stride_kb = 0 if kernel.ndim == 3 else channels * 9
    grid = (triton.cdiv(height * width, _BLOCK_P), triton.cdiv(channels, _BLOCK_C), batch)
    wrap_triton(_dwconv3x3_fwd_kernel)[grid](
        x,
        kernel,
        bias if bias is not None else kernel,  # never read without HAS_BIAS
        y,
        height,
        width,
        channels,
        stride_kb,
        HAS_BIAS=bias is not None,
        RESIDUAL=residual,
        BLOCK_P=_BLOCK_P,
        BLOCK_C=_BLOCK_C,
    )
    return y


@triton_op("weightformer::dwconv3x3", mutates_args={})
def _dwconv3x3_op(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, residual: bool) -> torch.Tensor:
    return _launch_forward(x, kernel, bias, residual)


@triton_op("weightformer::dwconv3x3_backward", mutates_args={})
def _dwconv3x3_backward_op(
    grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, residual: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, height, width, channels = x.shape
    # dx: the same correlation with the taps flipped (the transpose of a zero-padded 3x3 conv), no bias.
    dx = _launch_forward(grad, kernel.flip(-2, -1).contiguous(), None, residual)
    num_pb = triton.cdiv(height * width, _BLOCK_P)
    part = torch.empty(batch, num_pb, 9, channels, device=x.device, dtype=torch.float32)
    grid = (num_pb, triton.cdiv(channels, _BLOCK_C), batch)
    wrap_triton(_dwconv3x3_wgrad_kernel)[grid](
        x, grad, part, height, width, channels, BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C
    )
    dk = part.sum(dim=1)  # (B, 9, C)
    if kernel.ndim == 3:
        dk = dk.sum(dim=0)  # shared kernel: (9, C)
    dk = dk.transpose(-2, -1).reshape(kernel.shape).to(kernel.dtype)  # (B, C, 3, 3) or (C, 3, 3)
    return dx, dk


def _setup_context(ctx, inputs, output) -> None:
    x, kernel, bias, residual = inputs
    ctx.save_for_backward(x, kernel)
    ctx.residual = residual
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, grad: torch.Tensor):
    x, kernel = ctx.saved_tensors
    dx, dk = _dwconv3x3_backward_op(grad.contiguous(), x, kernel, ctx.residual)
    dbias = grad.sum(dim=(0, 1, 2), dtype=torch.float32).to(ctx.bias_dtype) if ctx.has_bias else None
    return dx, dk, dbias, None


_dwconv3x3_op.register_autograd(_backward, setup_context=_setup_context)


def dwconv3x3(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None, residual: bool = False
) -> torch.Tensor:
    """Fused 3x3 depthwise conv (+ bias, + residual) on channels-last tokens, differentiable.

    x: (B, H, W, C) -> (B, H, W, C) in x's dtype. kernel: (B, C, 3, 3) per sample or (C, 3, 3) shared, kept in
    its own dtype (fp32 weights stay fp32; the accumulation is fp32 either way). bias: (C,) or None.
    residual: add x to the output (the block's skip connection) in the same pass.
    """
    if kernel.shape[-2:] != (3, 3):
        raise ValueError(f"dwconv3x3 needs 3x3 taps, got a kernel of shape {tuple(kernel.shape)}.")
    return _dwconv3x3_op(x.contiguous(), kernel.contiguous(), bias, residual)
