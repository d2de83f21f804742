"""The dynamic linear layer's fast path: the same function as `weightformer.layers.DynamicLinear`, fewer FLOPs.

Two rewrites, each an exact identity up to float rounding:

- The predicted update sum_p phi_out(x_p)^T phi_in(x_p) = (W2^T (sum_p v_p^T u_p)) W1 (associativity): the sum
  over the Np pooled tokens is taken on the rank-reduced factors (D_r x C_r) before the bases expand them, so
  the cost no longer grows as Np * C * D. Chosen when it is cheaper (for WeightFormer-T/S from 224x224 on, where it
  is about even); at 896x896 (Np = 784) the predictor needs ~11x fewer MACs.
- y = X (W0 + dW) + b as one batched GEMM with the bias as its initial value (baddbmm): no separate bias pass,
  no einsum permutes.
- On few tokens per sample (224x224: N = 196), dW (B, D, C) is not formed at all. dW = s W2^T (v^T u) W1,
  row-bounded, is kept in one of two factored forms, and y = X W0^T + b plus a correction: the static part is one
  GEMM over all B*N tokens, the update thin products per sample.
  * Rank-C_r rows (`low_rank_bounded_update`, `apply_low_rank_dynamic_weight`): dW = R W1 with R (D x C_r)
    scaled per row, whose norms come from the C_r x C_r Gram matrix G = W1 W1^T; y += (X W1^T) R^T.
  * Pooled tokens (`pooled_bounded_update`, `apply_pooled_dynamic_weight`): dW = E^T u W1 with E = (v W2) scaled
    per column (Np x D), the row norms from the Np x Np kernel u G u^T; y += ((X W1^T) u^T) E. When there are
    fewer pooled tokens than C_r (WeightFormer-DiT at latent 32, WeightFormer-S at 224²) this is the cheaper one:
    the correction runs through Np instead of C_r, and R is never computed.
  `dynamic_linear_plan` counts the MACs of the three forms (forming dW priced with its elementwise passes) and
  picks the cheapest.
"""

from __future__ import annotations

import torch

from .mlp import _ONEDNN_LINEAR, linear, matmul

__all__ = [
    "low_rank_outer_product_sum",
    "apply_dynamic_weight",
    "low_rank_bounded_update",
    "apply_low_rank_dynamic_weight",
    "pooled_bounded_update",
    "apply_pooled_dynamic_weight",
    "dynamic_linear_plan",
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


def dynamic_linear_plan(x: torch.Tensor, num_pooled: int, in_rank: int, out_rank: int, out_features: int) -> str:
    """How the fast path applies the bounded update of a `DynamicLinear` to x: (B, H, W, C) with Np = num_pooled
    statistics tokens: "formed" (dW (B, D, C) formed, one batched GEMM), "rows" (`low_rank_bounded_update`) or
    "pooled" (`pooled_bounded_update`), whichever takes the fewest MACs per sample (forming dW priced with its
    elementwise passes).

    Always "formed" under autocast or in 16-bit floats: the Gram-matrix row norms would lose precision there.
    """
    if x.dtype not in (torch.float32, torch.float64):
        return "formed"
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return "formed"
    n, p, c, d = x.shape[1] * x.shape[2], num_pooled, x.shape[3], out_features
    c_r, d_r = in_rank, out_rank
    # Per sample, beyond the static GEMM (or the per-sample one that replaces it) and the factors u, v:
    rank_sum = p * d_r * c_r + d * d_r * c_r  # W2^T (v^T u): (D, C_r)
    # On fp32 CPU tensors the static GEMM runs on oneDNN (`linear`), the per-sample one on torch.bmm (MKL) at about
    # half its rate: priced as one more static GEMM.
    per_sample_gemm = n * c * d if x.device.type == "cpu" and x.dtype == torch.float32 and _ONEDNN_LINEAR else 0
    costs = {
        # the rank-reduced sum, R W1, the passes over dW, and the per-sample GEMM's lower rate
        "formed": rank_sum + d * c * (c_r + _FORMED_UPDATE_PASSES_IN_MACS) + per_sample_gemm,
        # R = the rank-reduced sum, its row norms through G, X W1^T, then R. (R through v W2 instead, the other
        # order, would cost more than "pooled" wherever it beats the sum, so it is not a plan.)
        "rows": rank_sum + d * c_r * c_r + n * c * c_r + n * c_r * d,
        # E = v W2, the kernel u G u^T and the norms e_d^T K e_d, X W1^T, its scores against u, then E
        "pooled": p * d_r * d + p * c_r * (c_r + p) + p * p * d + n * c * c_r + n * p * (c_r + d),
    }
    return min(costs, key=costs.__getitem__)


def _bounded_scale(squared: torch.Tensor, scale: float) -> torch.Tensor:
    """scale / (||dW_d|| + 1) from the squared row norms of the unscaled update, ||dW_d|| = scale * sqrt(squared).
    Clamped above 0: the norm's gradient at a zero row is then 0, as torch.linalg.vector_norm's."""
    norm = squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt() * scale
    return scale / (norm + 1.0)


def low_rank_bounded_update(
    u: torch.Tensor, v: torch.Tensor, input_basis: torch.Tensor, output_basis: torch.Tensor, scale: float
) -> torch.Tensor:
    """The row-bounded update bound_rows(scale * W2^T (v^T u) W1) as R^T (B, C_r, D) with dW = R W1, never formed.

    u: (B, Np, C_r), v: (B, Np, D_r), input_basis W1: (C_r, C), output_basis W2: (D_r, D) -> R^T: (B, C_r, D).
    bound_rows divides each row d of dW by (||dW_d|| + 1); the norms come from the Gram matrix G = W1 W1^T. R is
    kept transposed, (u^T v) W2: one GEMM over all B * C_r rows, and the layout the correction's product reads.
    """
    rows_t = matmul(u.transpose(1, 2) @ v, output_basis)  # (B, C_r, D): (W2^T (v^T u))^T
    gram = input_basis @ input_basis.t()  # (C_r, C_r)
    # ||R_d W1||^2 = R_d G R_d^T for each column d of R^T: (B, 1, D)
    squared = ((gram @ rows_t) * rows_t).sum(dim=1, keepdim=True)
    return rows_t * _bounded_scale(squared, scale)


def apply_low_rank_dynamic_weight(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows_t: torch.Tensor, input_basis: torch.Tensor
) -> torch.Tensor:
    """y = x (W0 + R W1)^T + b per sample. x: (B, H, W, C), weight W0: (D, C), bias: (D,) or None, rows_t R^T:
    (B, C_r, D) (`low_rank_bounded_update`), input_basis W1: (C_r, C) -> (B, H, W, D)."""
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)  # (B, N, C)
    y = linear(tokens, weight, bias)  # (B, N, D): the static part, one GEMM over all B*N tokens (oneDNN on CPU)
    y = _add_correction(y, matmul(tokens, input_basis.t()), rows_t)  # + (x W1^T) R^T
    return y.reshape(batch, height, width, -1)  # (B, H, W, D)


def pooled_bounded_update(
    u: torch.Tensor, v: torch.Tensor, input_basis: torch.Tensor, output_basis: torch.Tensor, scale: float
) -> torch.Tensor:
    """The row-bounded update bound_rows(scale * W2^T (v^T u) W1) as E (B, Np, D) with dW = E^T u W1, never formed.

    u: (B, Np, C_r), v: (B, Np, D_r), input_basis W1: (C_r, C), output_basis W2: (D_r, D) -> E: (B, Np, D), the
    columns of v W2 scaled by scale / (||dW_d|| + 1). Row d of the unscaled update is e_d^T u W1 for column e_d of
    e = v W2, so ||dW_d||^2 / scale^2 = e_d^T (u G u^T) e_d with G = W1 W1^T: an Np x Np kernel per sample.
    """
    expanded = matmul(v, output_basis)  # (B, Np, D): v W2, one GEMM over all pooled tokens
    gram = input_basis @ input_basis.t()  # (C_r, C_r)
    kernel = u @ matmul(u, gram).transpose(1, 2)  # (B, Np, Np): u G u^T
    squared = ((kernel @ expanded) * expanded).sum(dim=1, keepdim=True)  # (B, 1, D)
    return expanded * _bounded_scale(squared, scale)


def apply_pooled_dynamic_weight(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, u: torch.Tensor, values: torch.Tensor,
    input_basis: torch.Tensor,
) -> torch.Tensor:
    """y = x (W0 + E^T u W1)^T + b per sample. x: (B, H, W, C), weight W0: (D, C), bias: (D,) or None, u:
    (B, Np, C_r), values E: (B, Np, D) (`pooled_bounded_update`), input_basis W1: (C_r, C) -> (B, H, W, D).

    The correction x W1^T u^T E is an unnormalised linear attention over the Np pooled tokens: scores (N x Np) of
    each token's rank-C_r projection against the input factors, read out through E."""
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)  # (B, N, C)
    scores = matmul(tokens, input_basis.t()) @ u.transpose(1, 2)  # (B, N, Np)
    return _add_correction(linear(tokens, weight, bias), scores, values).reshape(batch, height, width, -1)


def _add_correction(y: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """y + left @ right, batched; in place where no gradient is recorded through y."""
    if torch.is_grad_enabled() and y.requires_grad:
        # Out of place: in place on F.linear's (viewed) output, autograd would add a CopySlices / AsStrided
        # backward (a zero-filled and two copied (B, N, D) buffers, ~6 % of the layer's training step).
        return torch.baddbmm(y, left, right)
    return y.baddbmm_(left, right)
