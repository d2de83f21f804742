"""Depthwise k x k convolution on channels-last tokens in plain PyTorch: the fast path wherever Triton is not.

Two choices, both measured on CPU (2 threads, fp32, oneDNN) against the reference twin
`weightformer.layers.per_sample_depthwise_conv`:

- The residual is folded into the kernel: x + conv(x, K) = conv(x, K + e), e the one-hot centre tap. Equal up
  to float rounding, and it saves a full read-write pass over the tokens per block. Only done when the conv runs
  in fp32/fp64 (with a bf16 kernel 1 + K would lose K's low bits).
- Per-sample kernels: the batch is moved next to the channels, (B, H, W, C) -> (H, W, B*C), so one grouped
  conv with B*C groups runs on a channels-last view; oneDNN's channels-last depthwise conv is ~2x faster than
  the reference's NCHW grouped conv at 224 and ~3x at 896, and the shapes stay symbolic under torch.compile
  (a per-sample Python loop was slower at small grids). Shared kernels need no copy at all.

Under torch.compile on CPU both convs run as the custom op weightformer::conv2d (`conv`).
"""

from __future__ import annotations

import torch

from .conv import conv2d

__all__ = ["depthwise_conv_torch"]


def _fold_residual(x: torch.Tensor) -> bool:
    if x.dtype not in (torch.float32, torch.float64):
        return False
    # Autocast would run the conv, and so 1 + K, in 16 bits. (Other devices, e.g. "meta", have no autocast here.)
    return x.device.type not in ("cpu", "cuda") or not torch.is_autocast_enabled(x.device.type)


def _add_centre_tap(kernel: torch.Tensor) -> torch.Tensor:
    """K + e: one added to the centre tap of every (…, k, k) kernel."""
    k = kernel.shape[-1]
    centre = torch.zeros(k, k, dtype=kernel.dtype, device=kernel.device)
    centre[k // 2, k // 2] = 1.0
    return kernel + centre


def depthwise_conv_torch(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None, residual: bool = False
) -> torch.Tensor:
    """Depthwise conv, 'same' zero padding, optional residual add, on channels-last tokens.

    x: (B, H, W, C); kernel: (B, C, k, k) per sample or (C, k, k) shared; bias: (C,) or None -> (B, H, W, C).
    """
    batch, height, width, channels = x.shape
    k = kernel.shape[-1]
    fold = residual and _fold_residual(x)
    if fold:
        kernel = _add_centre_tap(kernel)
    bias = None if bias is None else bias.to(x.dtype)
    if kernel.ndim == 3:  # shared: (B, C, H, W) channels-last view, no copy
        weight = kernel.unsqueeze(1).to(x.dtype)  # (C, 1, k, k)
        y = conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=k // 2, groups=channels)
        y = y.permute(0, 2, 3, 1)  # (B, H, W, C)
    else:
        stacked = x.permute(1, 2, 0, 3).reshape(1, height, width, batch * channels)  # (1, H, W, B*C), one copy
        weight = kernel.reshape(batch * channels, 1, k, k).to(x.dtype)
        stacked_bias = None if bias is None else bias.repeat(batch)
        y = conv2d(stacked.permute(0, 3, 1, 2), weight, stacked_bias, padding=k // 2, groups=batch * channels)
        y = y.permute(0, 2, 3, 1).reshape(height, width, batch, channels).permute(2, 0, 1, 3)  # (B, H, W, C)
    y = y.contiguous()
    return x + y if residual and not fold else y
