"""The dynamic linear layer's fast path: the same function as `weightformer.layers.DynamicLinear`, fewer FLOPs.

Two rewrites, each an exact identity up to float rounding:

- The predicted update sum_p phi_out(x_p)^T phi_in(x_p) = (W2^T (sum_p v_p^T u_p)) W1 (associativity): the sum
  over the Np pooled tokens is taken on the rank-reduced factors (D_r x C_r) before the bases expand them, so
  the cost no longer grows as Np * C * D. Chosen when it is cheaper (for WeightFormer-T/S from 224x224 on, where it
  is about even); at 896x896 (Np = 784) the predictor needs ~11x fewer MACs.
- y = X (W0 + dW) + b as one batched GEMM with the bias as its initial value (baddbmm): no separate bias pass,
  no einsum permutes.
- On few tokens per sample (224x224: N = 196), dW (B, D, C) is not formed at all (`low_rank_bounded_update`,
  `apply_low_rank_dynamic_weight`):
  dW = s W2^T (v^T u) W1 row-bounded is a rank-C_r product R W1 scaled per row, its row norms come from the
  C_r x C_r Gram matrix W1 W1^T, and y = X W0^T + b + (X W1^T) R'^T: the static part is one GEMM over all B*N
  tokens and the update two thin ones. Forming dW costs about D*C*(C_r + a few elementwise passes) per sample,
  the factored form N*C_r*(C + D) + D*C_r^2 more MACs; `low_rank_dynamic_linear_preferred` picks the cheaper.
"""

from __future__ import annotations

import torch

from .mlp import linear, matmul

__all__ = [
    "low_rank_outer_product_sum",
    "apply_dynamic_weight",
    "low_rank_bounded_update",
    "apply_low_rank_dynamic_weight",
    "low_rank_dynamic_linear_preferred",
]

# What forming the (B, D, C) update costs beyond its GEMM, per weight element, priced in GEMM MACs: the passes
# that scale it, take its row norms, divide and add W0 (and their backward), each memory-bound. Measured per
# layer on CPU (fp32, CPU time, batch 16 at 224, 4 at 448): factored vs formed, WeightFormer-T at 224 17.6 vs
# 18.7 ms inference, 59 vs 85 ms training; -S 79 vs 113 and 267 vs 444 ms; -T at 448 14.2 vs 11.7 ms inference.
_FORMED_UPDATE_PASSES_IN_MACS = 32


def low_rank_outer_product_sum(
    u: torch.Tensor, v: torch.Tensor, input_basis: torch.Tensor, output_basis: torch.Tensor
) -> torch.Tensor:
    """sum_p (v_p W2)^T (u_p W1), computed as W2^T (v^T u) W1.

    u: (B, Np, C_r), v: (B, Np, D_r), input_basis W1: (C_r, C), output_basis W2: (D_r, D) -> (B, D, C).
    """
    num_pooled, in_rank = u.shape[1], u.shape[2]
    out_rank, out_features = output_basis.shape
    in_features = input_basis.shape[1]
    tokens_first = num_pooled * (in_rank * in_features + out_rank * out_features + out_features * in_features)
    rank_first = num_pooled * out_rank * in_rank + out_features * in_rank * (out_rank + in_features)
    if tokens_first <= rank_first:  # few pooled tokens (small images): the reference order is cheaper
        return (v @ output_basis).transpose(1, 2) @ (u @ input_basis)
    core = v.transpose(1, 2) @ u  # (B, D_r, C_r): the only step that touches the Np tokens
    return (output_basis.t() @ core) @ input_basis  # (B, D, C_r) @ (C_r, C) -> (B, D, C)


def apply_dynamic_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x W^T + b per sample. x: (B, H, W, C), weight: (B, D, C), bias: (D,) -> (B, H, W, D)."""
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)  # (B, N, C)
    weight_t = weight.transpose(1, 2)  # (B, C, D)
    if bias is None:
        y = torch.bmm(tokens, weight_t)
    else:
        y = torch.baddbmm(bias, tokens, weight_t)  # the bias is the GEMM's initial value
    return y.reshape(batch, height, width, -1)  # (B, H, W, D)


def low_rank_dynamic_linear_preferred(x: torch.Tensor, in_rank: int, out_rank: int, out_features: int) -> bool:
    """Whether the factored update (`low_rank_bounded_update`) is cheaper than forming dW for x: (B, H, W, C).

    Not under autocast or in 16-bit floats: the Gram-matrix row norms would lose precision there.
    """
    if x.dtype not in (torch.float32, torch.float64):
        return False
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return False
    num_tokens, in_features = x.shape[1] * x.shape[2], x.shape[3]
    # Per sample, beyond what both do (the rank-reduced sum, W2^T times it, the token GEMM with W0 or W0 + dW):
    factored = num_tokens * in_rank * (in_features + out_features) + out_features * in_rank * in_rank  # X W1^T, R'
    formed = out_features * in_features * (in_rank + _FORMED_UPDATE_PASSES_IN_MACS)  # R W1, and passes over dW
    return factored < formed


def low_rank_bounded_update(
    u: torch.Tensor, v: torch.Tensor, input_basis: torch.Tensor, output_basis: torch.Tensor, scale: float
) -> torch.Tensor:
    """The row-bounded update bound_rows(scale * W2^T (v^T u) W1) as R (B, D, C_r) with dW = R W1, never formed.

    u: (B, Np, C_r), v: (B, Np, D_r), input_basis W1: (C_r, C), output_basis W2: (D_r, D) -> R: (B, D, C_r).
    bound_rows divides each row d of dW by (||dW_d|| + 1); the norms come from the Gram matrix W1 W1^T.
    """
    num_pooled, in_rank, out_rank = u.shape[1], u.shape[2], v.shape[2]
    out_features = output_basis.shape[1]
    gram = input_basis @ input_basis.t()  # (C_r, C_r)
    # rows = W2^T v^T u (B, D, C_r), in the cheaper order: through the D_r x C_r sum, or through v W2 (Np x D).
    sum_first = (num_pooled + out_features) * out_rank * in_rank
    squared = None
    if sum_first <= num_pooled * (out_rank + in_rank) * out_features:
        rows = output_basis.t() @ (v.transpose(1, 2) @ u)  # dW = scale * rows @ W1
    else:  # few pooled tokens, wide rank (WeightFormer-S at 224: Np = 49, D_r = 384; DiT-S/2 at 32: Np = 64)
        expanded = matmul(v, output_basis)  # (B, Np, D): v W2
        rows = expanded.transpose(1, 2) @ u
        # ||rows_d W1||^2 = e_d^T (u G u^T) e_d for column d of e = v W2: through the (Np x Np) kernel u G u^T
        # when that is cheaper than rows x G (fewer pooled tokens than C_r; WeightFormer-DiT-B/2 at latent 32:
        # 64 against 192, a third of the MACs and no (B, D, C_r) map of rows x G).
        if num_pooled * num_pooled < in_rank * in_rank:
            kernel = u @ matmul(u, gram).transpose(1, 2)  # (B, Np, Np)
            squared = ((kernel @ expanded) * expanded).sum(dim=1).unsqueeze(-1)  # (B, D, 1)
    if squared is None:  # (B, D, 1): ||rows_d W1||^2 = rows_d G rows_d^T, the row dot without a product map
        squared = torch.einsum("bdc,bdc->bd", matmul(rows, gram), rows).unsqueeze(-1)
    # Clamped above 0: the norm's gradient at a zero row is then 0, as torch.linalg.vector_norm's.
    norm = squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt() * scale  # ||dW_d||
    return rows * (scale / (norm + 1.0))


def apply_low_rank_dynamic_weight(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor, input_basis: torch.Tensor
) -> torch.Tensor:
    """y = x (W0 + R W1)^T + b per sample. x: (B, H, W, C), weight W0: (D, C), bias: (D,) or None, rows R:
    (B, D, C_r), input_basis W1: (C_r, C) -> (B, H, W, D)."""
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)  # (B, N, C)
    y = linear(tokens, weight, bias)  # (B, N, D): the static part, one GEMM over all B*N tokens (oneDNN on CPU)
    correction = (matmul(tokens, input_basis.t()), rows.transpose(1, 2))  # + (x W1^T) R^T
    if torch.is_grad_enabled() and y.requires_grad:
        # Out of place: in place on F.linear's (viewed) output, autograd would add a CopySlices / AsStrided
        # backward (a zero-filled and two copied (B, N, D) buffers, ~6 % of the layer's training step).
        y = torch.baddbmm(y, *correction)
    else:
        y = y.baddbmm_(*correction)
    return y.reshape(batch, height, width, -1)  # (B, H, W, D)
