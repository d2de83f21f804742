"""Small helpers shared by the dynamic layers: input checks, pooling, bounded updates."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels

__all__ = ["Conv2d", "check_grid", "pool_2x2", "softmax_pool", "bound_update", "to_nchw", "to_nhwc"]


def check_grid(x: torch.Tensor, channels: int, min_size: int, layer: str) -> None:
    """Raise a ValueError a user understands unless `x` is a (B, H, W, C) grid the layer accepts."""
    if x.ndim != 4:
        raise ValueError(
            f"{layer} expects tokens on a grid of shape (batch, height, width, channels); "
            f"got a {x.ndim}-D tensor of shape {tuple(x.shape)}."
        )
    if x.shape[-1] != channels:
        raise ValueError(
            f"{layer} was built for {channels} channels but the input has {x.shape[-1]} "
            f"in its last dimension (shape {tuple(x.shape)}; the layout is (batch, height, width, channels))."
        )
    height, width = x.shape[1], x.shape[2]
    if height < min_size or width < min_size:
        raise ValueError(
            f"{layer} needs a token grid of at least {min_size}x{min_size} to pool its global statistics; "
            f"got {height}x{width}."
        )


class Conv2d(nn.Conv2d):
    """nn.Conv2d (zero padding) computed by `kernels.conv2d`: under torch.compile on CPU the custom op
    weightformer::conv2d, which keeps inductor's channels-last heuristic off the (B, H, W, C) token maps that feed
    the dynamic convs' predictors; F.conv2d everywhere else. Same parameters, same state_dict keys."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Conv2d's argument name
        if not torch.jit.is_scripting():  # (TorchScript compiles nn.Conv2d's own call)
            if self.padding_mode == "zeros":
                return kernels.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                      self.groups)
        return self._conv_forward(input, self.weight, self.bias)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) view (channels-last memory, no copy)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) view."""
    return x.permute(0, 2, 3, 1)


def pool_2x2(x: torch.Tensor, ceil_mode: bool = True) -> torch.Tensor:
    """2x2 average pooling with stride 2 of a (B, H, W, C) grid -> (B, ceil(H/2), ceil(W/2), C).

    On even grids this is exactly the reference code's pooling. On odd grids the reference code floors,
    silently dropping the last row/column from the statistics; by default we keep them instead (ceil mode),
    averaging the partial windows over the tokens they hold, so every token contributes to the predicted
    weights. `ceil_mode=False` is the reference code's floor: (B, floor(H/2), floor(W/2), C).
    """
    pooled = F.avg_pool2d(to_nchw(x), kernel_size=2, stride=2, ceil_mode=ceil_mode)  # (B, C, Hp, Wp)
    return to_nhwc(pooled)


def softmax_pool(x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Pool a (B, H, W, C) grid into K summaries with learned queries and a softmax over positions: (B, K, C).

        a_k = softmax over n = 1..N of  x_n . q_k          (N = H*W; queries q: (K, C))
        z_k = sum_n a_k[n] x_n

    Unlike an average, a summary can concentrate on a few tokens (a_k[n] near 1 for them), so a small object
    is not diluted by the N - 1 others. The cost is O(N K C): linear in the token count, as every statistic of
    the dynamic layers. There are no keys or values: the query scores the (normalised) tokens directly.
    """
    tokens = x.flatten(1, 2)  # (B, N, C)
    weights = (tokens @ queries.t()).softmax(dim=1)  # (B, N, K), each column sums to 1 over the N positions
    return weights.transpose(1, 2).to(tokens.dtype) @ tokens  # (B, K, C)


def bound_update(delta: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """delta / (||delta|| + 1), the norm taken over `dims`: amplitude bounded below 1, direction kept."""
    norm = torch.linalg.vector_norm(delta, dim=dims, keepdim=True)
    return delta / (norm + 1.0)
