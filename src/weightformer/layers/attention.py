"""Softmax attention read as a two-layer MLP whose weights are predicted from the input.

For one query row q (d), softmax attention computes

    o = softmax(q K^T * s) V

which is exactly an MLP applied to q: a first layer with weight W1 = s K^T (d x N) and no bias, the softmax
over its N hidden units as the activation, and a second layer with weight W2 = V (N x d). Both weights are
*predicted from the input* (K = X W_k, V = X W_v) and the MLP's hidden width is the sequence length N, which
is why attention costs O(N^2): every token evaluates an MLP with N hidden units. WeightFormer keeps the idea of
input-predicted weights but predicts weights of a fixed size from compressed statistics, so the cost is O(N).

`attention_as_dynamic_mlp` computes attention literally this way and equals
`torch.nn.functional.scaled_dot_product_attention` to float precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["DynamicMLPWeights", "attention_mlp_weights", "attention_as_dynamic_mlp"]


class DynamicMLPWeights(NamedTuple):
    """The two predicted weights of the MLP that softmax attention applies to each query."""

    first: torch.Tensor  # (..., d, N): s * K^T
    second: torch.Tensor  # (..., N, d_v): V


def attention_mlp_weights(key: torch.Tensor, value: torch.Tensor, scale: float | None = None) -> DynamicMLPWeights:
    """The MLP weights attention predicts from its keys and values.

    key: (..., N, d), value: (..., N, d_v). `scale` defaults to d^(-1/2), as in scaled dot-product attention.
    """
    scale = key.shape[-1] ** -0.5 if scale is None else scale
    return DynamicMLPWeights(first=key.transpose(-2, -1) * scale, second=value)


def attention_as_dynamic_mlp(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Softmax attention evaluated as an MLP with input-predicted weights.

    query: (..., L, d), key: (..., N, d), value: (..., N, d_v) -> (..., L, d_v).
    Equal to `scaled_dot_product_attention(query, key, value, scale=scale)`.
    """
    weights = attention_mlp_weights(key, value, scale)
    hidden = query @ weights.first  # (..., L, N): first layer, one hidden unit per key
    hidden = hidden.softmax(dim=-1)  # the activation: a softmax across the N hidden units
    return hidden @ weights.second  # (..., L, d_v): second layer
