"""Dynamic depthwise convolution: a per-sample k x k depthwise kernel K0 + dK(X), dK from global statistics.

The kernel update is predicted from a pooled summary of the whole input, so each output pixel depends on every
input pixel while the cost stays linear in H*W. The predictors studied in the WeightFormer paper are selectable
by name; see `CONV_PREDICTORS`. Each returns an update with bounded amplitude.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from .. import kernels
from .common import Conv2d, bound_update, check_grid, softmax_pool, to_nchw, to_nhwc

__all__ = [
    "DynamicDWConv2d",
    "AdaptiveKernelPredictor",
    "GapKernelPredictor",
    "AmpDirKernelPredictor",
    "ConvKernelPredictor",
    "QueryKernelPredictor",
    "CONV_PREDICTORS",
    "per_sample_depthwise_conv",
    "shifted_depthwise_conv",
    "adaptive_pool",
]


def adaptive_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Adaptive k x k average pooling of a (B, H, W, C) grid -> (B, C, k, k), contiguous.

    Region (i, j) spans rows floor(i H / k) .. ceil((i + 1) H / k) and the same for columns (PyTorch's
    adaptive pooling). Contiguous: a channels-last k x k map would give the 1x1 convs' weights channels-last
    gradients, which DistributedDataParallel's flat gradient buckets have to copy (and warn about) every step.
    """
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return _adaptive_pool_by_regions(x, k)
    return F.adaptive_avg_pool2d(to_nchw(x), k).contiguous()


def _adaptive_pool_by_regions(x: torch.Tensor, k: int) -> torch.Tensor:
    # The same regions as explicit slices with symbolic bounds, for exporters: ONNX's translation of the
    # decomposed adaptive pooling gives wrong regions once the input size is dynamic. Ceil is written as
    # (n + k - 1) // k on non-negative numbers: ONNX's integer division truncates towards zero.
    height, width = x.shape[1], x.shape[2]
    rows = []
    for i in range(k):
        r0, r1 = (i * height) // k, ((i + 1) * height + k - 1) // k
        cols = [x[:, r0:r1, (j * width) // k : ((j + 1) * width + k - 1) // k].mean(dim=(1, 2)) for j in range(k)]
        rows.append(torch.stack(cols, dim=-1))  # (B, C, k)
    return torch.stack(rows, dim=-2)  # (B, C, k, k)


class AdaptiveKernelPredictor(nn.Module):
    """ "Spatially adaptive" prediction (the released models'): each tap is predicted from its own region.

    X_p = AdaptiveAvgPool_{k x k}(X)                       (B, C, k, k): tap (i, j) sees region (i, j)
    dK  = Conv1x1(GELU(Conv1x1(X_p) + c))                  (B, C, k, k), no bias on the second conv
    dK <- dK / (||dK||_F + 1)                              per sample and channel, over the k*k taps
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.min_grid = kernel_size
        self.fc1 = Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.fc2 = Conv2d(channels, channels, 1, bias=False)

    def unbounded(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> the raw prediction (B, C, k, k), before normalisation."""
        pooled = adaptive_pool(x, self.kernel_size)  # (B, C, k, k)
        return self.fc2(self.act(self.fc1(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> dK: (B, C, k, k)."""
        return bound_update(self.unbounded(x), dims=[-2, -1])


class GapKernelPredictor(nn.Module):
    """Global-average-pooling prediction: all k*k taps come from one global statistic.

        g   = mean over H, W of X                              (B, C)
        h   = GELU(g A + a)                                    (B, C)
        dK[c, t] = h[c] * E[c, t] + e[c, t]                    (B, C, k, k), E: a learned per-channel tap pattern
        dK <- dK / (||dK||_F + 1)

    The shape of each channel's update is fixed; only its amplitude and sign depend on the input.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.min_grid = 1
        self.fc1 = Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.taps = Conv2d(channels, channels * kernel_size**2, 1, groups=channels)  # E and e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> dK: (B, C, k, k)."""
        g = x.mean(dim=(1, 2))[:, :, None, None]  # (B, C, 1, 1)
        delta = self.taps(self.act(self.fc1(g)))  # (B, C*k*k, 1, 1)
        delta = delta.reshape(x.shape[0], -1, self.kernel_size, self.kernel_size)  # (B, C, k, k)
        return bound_update(delta, dims=[-2, -1])


class AmpDirKernelPredictor(nn.Module):
    """Decoupled amplitude and direction.

        D   = Conv1x1(GELU(Conv1x1(AdaptiveAvgPool_{k x k}(X))))   (B, C, k, k), the direction
        a   = sigmoid(Conv1x1(GELU(Conv1x1(GAP(X)))))               (B, C, 1, 1), the amplitude in (0, 1)
        dK  = a * D / ||D||_F

    The amplitude of the update is predicted explicitly (from global averages) instead of being the
    bounded norm of one prediction.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.min_grid = kernel_size
        self.direction = AdaptiveKernelPredictor(channels, kernel_size)
        self.amp_fc1 = Conv2d(channels, channels, 1)
        self.amp_act = nn.GELU()
        self.amp_fc2 = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> dK: (B, C, k, k)."""
        d = self.direction.unbounded(x)  # (B, C, k, k)
        d = d / torch.linalg.vector_norm(d, dim=(-2, -1), keepdim=True).clamp_min(1e-6)  # unit direction
        g = x.mean(dim=(1, 2))[:, :, None, None]  # (B, C, 1, 1)
        amplitude = torch.sigmoid(self.amp_fc2(self.amp_act(self.amp_fc1(g))))  # (B, C, 1, 1)
        return amplitude * d


class ConvKernelPredictor(nn.Module):
    """Convolutional prediction: like "adaptive", but a depthwise k x k conv over the pooled map first, so
    each tap's update also sees the neighbouring regions.

        X_p = AdaptiveAvgPool_{k x k}(X)                          (B, C, k, k)
        dK  = Conv1x1(GELU(Conv1x1(DWConv_{k x k}(X_p))))         zero padding, k x k map kept
        dK <- dK / (||dK||_F + 1)
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.min_grid = kernel_size
        self.spatial = Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.fc1 = Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.fc2 = Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> dK: (B, C, k, k)."""
        pooled = adaptive_pool(x, self.kernel_size)  # (B, C, k, k), see above
        return bound_update(self.fc2(self.act(self.fc1(self.spatial(pooled)))), dims=[-2, -1])


class QueryKernelPredictor(nn.Module):
    """Ours: "adaptive" plus a global context that a few tokens can dominate (K learned softmax queries).

        X_p = AdaptiveAvgPool_{k x k}(X)                             (B, C, k, k): tap (i, j) sees region (i, j)
        z_k = sum_n softmax_n(x_n . q_k) x_n,  k = 1..K             (B, K, C), see `softmax_pool`
        g   = [z_1, ..., z_K] G + g0                                (B, C), G: (K*C, C)
        dK  = Conv1x1(GELU(Conv1x1(X_p) + g))                       (B, C, k, k), no bias on the second conv
        dK <- dK / (||dK||_F + 1)

    The region averages of "adaptive" dilute a small object by its region's size; z_k is a convex combination
    of tokens that a learned query can concentrate on a few. Cost O(N K C), linear in N; K C^2 parameters in G.
    """

    def __init__(self, channels: int, kernel_size: int = 3, num_queries: int = 4) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.min_grid = kernel_size
        self.queries = nn.Parameter(torch.empty(num_queries, channels))  # (K, C)
        self.context = nn.Linear(num_queries * channels, channels)  # G and g0
        self.fc1 = Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.fc2 = Conv2d(channels, channels, 1, bias=False)
        trunc_normal_(self.queries, std=0.02)  # random, not zero: equal queries would stay equal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> dK: (B, C, k, k)."""
        pooled = adaptive_pool(x, self.kernel_size)  # (B, C, k, k)
        context = self.context(softmax_pool(x, self.queries).flatten(1))  # (B, K*C) -> (B, C)
        hidden = self.act(self.fc1(pooled) + context[:, :, None, None])  # (B, C, k, k)
        return bound_update(self.fc2(hidden), dims=[-2, -1])


CONV_PREDICTORS = {
    "gap": GapKernelPredictor,
    "adaptive": AdaptiveKernelPredictor,
    "amp_dir": AmpDirKernelPredictor,
    "conv": ConvKernelPredictor,
    "query_pool": QueryKernelPredictor,
}


def per_sample_depthwise_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise convolution with a different kernel per sample, 'same' zero padding.

    x: (B, H, W, C), kernel: (B, C, k, k), bias: (C,) -> (B, H, W, C). The plain PyTorch statement of the
    math: one grouped convolution with B*C groups.
    """
    batch, height, width, channels = x.shape[0], x.shape[1], x.shape[2], x.shape[3]  # (indexed: torch.fx)
    k = kernel.shape[-1]
    stacked = to_nchw(x).reshape(1, batch * channels, height, width)  # (1, B*C, H, W)
    weight = kernel.reshape(batch * channels, 1, k, k).to(stacked.dtype)
    y = F.conv2d(stacked, weight, padding=k // 2, groups=batch * channels)  # (1, B*C, H, W)
    y = to_nhwc(y.reshape(batch, channels, height, width))  # (B, H, W, C)
    return y if bias is None else y + bias


def shifted_depthwise_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`per_sample_depthwise_conv` as k*k shifted multiply-adds, for exported graphs.

    x: (B, H, W, C), kernel: (B, C, k, k), bias: (C,) -> (B, H, W, C). Used while `torch.export` traces the
    model (the ONNX exporter included): a grouped conv with B*C groups would make the group count depend on
    the batch size, and ONNX's Conv needs a fixed one.
    """
    k = kernel.shape[-1]
    height, width = x.shape[1], x.shape[2]
    padded = F.pad(x, (0, 0, k // 2, k // 2, k // 2, k // 2))  # (B, H + k - 1, W + k - 1, C), zeros
    taps = kernel.to(x.dtype).permute(0, 2, 3, 1)  # (B, k, k, C)
    y = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            y = y + padded[:, i : i + height, j : j + width] * taps[:, i : i + 1, j : j + 1]  # (B, H, W, C)
    return y if bias is None else y + bias


class DynamicDWConv2d(nn.Module):
    """Depthwise k x k convolution with per-sample kernel K0 + dK(X) and a static bias.

    Takes and returns tokens on a grid, (B, H, W, C), channels last like the rest of WeightFormer.
    `static_weight` (C, 1, k, k) and `bias` (C,) hold K0 and b.

    Args:
        channels: C.
        kernel_size: k (odd).
        predictor: name in `CONV_PREDICTORS`: "gap", "adaptive", "amp_dir", "conv" (the paper's) or
            "query_pool" (ours: a global context that a few tokens can dominate).
    """

    def __init__(self, channels: int, kernel_size: int = 3, predictor: str = "adaptive") -> None:
        super().__init__()
        if predictor not in CONV_PREDICTORS:
            raise ValueError(f"Unknown dynamic conv predictor {predictor!r}; choose one of {sorted(CONV_PREDICTORS)}.")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.channels = channels
        self.kernel_size = kernel_size
        self.predictor_name = predictor
        self.static_weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.predictor = CONV_PREDICTORS[predictor](channels, kernel_size)
        self.min_grid = self.predictor.min_grid
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # K0 and b: truncated normal, std 0.02, as in the release. The predictor keeps PyTorch's default init.
        trunc_normal_(self.static_weight, std=0.02)
        trunc_normal_(self.bias, std=0.02)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, predictor={self.predictor_name}"

    def forward(self, x: torch.Tensor, residual: bool = False) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C); with `residual`, x + conv(x) (fused on the fast path)."""
        if not torch.jit.is_scripting():  # tracers skip the checks too: their sizes are symbolic
            if not kernels.reference_enabled_by_tracing():
                check_grid(x, self.channels, self.min_grid, "DynamicDWConv2d")
        kernel = self.static_weight.squeeze(1) + self.predictor(x)  # (B, C, k, k)
        if not torch.jit.is_scripting():  # TorchScript compiles the reference path only
            if not kernels.reference_enabled():
                return kernels.depthwise_conv(x, kernel, self.bias, residual=residual)
            if torch.compiler.is_exporting():  # a fixed number of groups for ONNX, see shifted_depthwise_conv
                y = shifted_depthwise_conv(x, kernel, self.bias)
                return x + y if residual else y
        y = per_sample_depthwise_conv(x, kernel, self.bias)
        return x + y if residual else y
