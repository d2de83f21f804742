"""Dynamic linear layer: y = X (W0 + dW(X)) + b, with dW predicted from compressed global statistics.

WeightFormer (He, Han, Huang, "Linear-Time Global Visual Modeling without Explicit Attention", 2026) reads
softmax attention as an MLP whose weights are predicted from the input, and replaces it by layers whose weights
are a static part plus an update predicted from length-independent statistics of the whole input. Every step
here is linear in the number of tokens N = H*W, yet every output token depends on every input token.

All predictors share one form: tokens are pooled, each pooled token x_p gives an input-side factor
phi_in(x_p) (C) and an output-side factor phi_out(x_p) (D), and the update is the sum of their outer products,

    dW = sum_p phi_in(x_p)^T phi_out(x_p) * C^(-1/2) / N          (C x D, stored here transposed, D x C)

followed by column normalisation dW[:, j] <- dW[:, j] / (||dW[:, j]|| + 1) (bounded amplitude, direction kept).
They differ in the statistics (pooled tokens or one global average) and the factor maps; see `LINEAR_PREDICTORS`.

The released statistics average: a small object's share of dW is its share of the image, so a few informative
tokens are diluted among many uninformative ones (see benchmarks/PROBES.md). Two statistics that are not, and
stay linear in N, are ours: "query_pool" (K summaries z_k, each a softmax over the N positions of a learned
query's scores, see `softmax_pool`, plus the mean; P = K + 1 summaries) and "mean_max" (the channel-wise mean
and max over the tokens; P = 2). Both divide by the number of summaries P instead of N:

    dW = sum_p phi_in(z_p)^T phi_out(z_p) * C^(-1/2) / P
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch.profiler import record_function

from .. import kernels
from .common import bound_update, check_grid, pool_2x2, softmax_pool

__all__ = ["DynamicLinear", "OuterProductPredictor", "LINEAR_PREDICTORS", "PREDICTOR_RANGE"]

# The torch.profiler range around the predictors' work on the fast path (read by `weightformer profile`).
PREDICTOR_RANGE = "weightformer::predictor"


def _predictor_range() -> AbstractContextManager:
    # Eager only: torch.compile would warn that it ignores the range.
    return nullcontext() if torch.compiler.is_compiling() else record_function(PREDICTOR_RANGE)


class OuterProductPredictor(nn.Module):
    """Predicts a bounded weight update dW (B, D, C) as a sum of outer products of pooled-token factors.

    With r the reduction rate, C_r = C / r and D_r = D / r, each pooled token x_p (C) is projected to
    [u | v] = x_p A + a (C_r + D_r), optionally through a hidden layer first (`depth=2`), and

        phi_in(x_p)  = act_in(u) W1     W1: (C_r, C)   "input basis"
        phi_out(x_p) = act_out(v) W2    W2: (D_r, D)   "output basis"

    where act_in / act_out are SiLU or the identity.

    Args:
        in_features: C.
        out_features: D.
        reduction: r; C and D must both be divisible by it.
        statistics: "pooled" (2x2 average pooling, stride 2, sum over the pooled tokens divided by the
            *unpooled* token count N, as the released models do), "global" (one globally averaged token),
            "query" (the mean and K softmax-pooled summaries, divided by K + 1; see the module docstring) or
            "mean_max" (the channel-wise mean and max over all tokens, divided by 2).
        act_in: apply SiLU to u.
        act_out: apply SiLU to v.
        depth: 1 for a single projection A, 2 for SiLU(x A' + a') A + a.
        odd_grid_pooling: "ceil" (default: odd grids keep their last row/column in the statistics) or "floor"
            (the reference code's pooling, which drops them; equal on even grids). See `pool_2x2`.
        num_queries: K, the learned queries of the "query" statistics.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        reduction: int = 4,
        statistics: str = "pooled",
        act_in: bool = True,
        act_out: bool = True,
        depth: int = 1,
        odd_grid_pooling: str = "ceil",
        num_queries: int = 4,
    ) -> None:
        super().__init__()
        if odd_grid_pooling not in ("ceil", "floor"):
            raise ValueError(f"odd_grid_pooling must be 'ceil' or 'floor', got {odd_grid_pooling!r}.")
        if in_features % reduction or out_features % reduction:
            raise ValueError(
                f"in_features ({in_features}) and out_features ({out_features}) must be divisible by "
                f"the reduction rate {reduction}."
            )
        if statistics not in ("pooled", "global", "query", "mean_max"):
            raise ValueError(f"statistics must be 'pooled', 'global', 'query' or 'mean_max', got {statistics!r}.")
        if depth not in (1, 2):
            raise ValueError(f"depth must be 1 or 2, got {depth}.")
        self.in_features = in_features
        self.out_features = out_features
        self.in_rank = in_features // reduction
        self.out_rank = out_features // reduction
        self.statistics = statistics
        self.act_in = act_in
        self.act_out = act_out
        self.ceil_mode = odd_grid_pooling == "ceil"
        # A 2x2 pooling needs at least a 2x2 grid; a global average works on any grid.
        self.min_grid = 2 if statistics == "pooled" else 1
        width = self.in_rank + self.out_rank
        self.hidden = nn.Linear(in_features, in_features) if depth == 2 else None
        self.proj = nn.Linear(in_features, width)
        self.input_basis = nn.Parameter(torch.empty(self.in_rank, in_features))
        self.output_basis = nn.Parameter(torch.empty(self.out_rank, out_features))
        # The "query" statistics' K learned queries (K, C); random, not zero: equal queries would stay equal.
        self.queries = nn.Parameter(torch.empty(num_queries, in_features)) if statistics == "query" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.hidden, self.proj):
            if linear is not None:
                trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)
        trunc_normal_(self.input_basis, std=0.02)
        trunc_normal_(self.output_basis, std=0.02)
        if self.queries is not None:
            trunc_normal_(self.queries, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> dW: (B, D, C), column-bounded."""
        u, v, scale = self.factors(x)  # (B, Np, C_r), (B, Np, D_r)
        delta = self._outer_product_sum(u, v)  # (B, D, C)
        delta = delta * scale
        # Each output column j of dW (C x D) is a row here: normalise over the C inputs.
        return bound_update(delta, dims=[-1])

    def factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """x: (B, H, W, C) -> u (B, Np, C_r), v (B, Np, D_r) and the scale C^(-1/2) / N (or / P) of their sum."""
        num_tokens = x.shape[1] * x.shape[2]
        if self.statistics == "pooled":
            pooled = pool_2x2(x, self.ceil_mode).flatten(1, 2)  # (B, Np, C)
            norm = num_tokens  # the reference divides by the unpooled count N, not Np
        elif self.statistics == "global":
            pooled = x.mean(dim=(1, 2)).unsqueeze(1)  # (B, 1, C)
            norm = 1
        elif self.statistics == "mean_max":
            pooled = torch.stack([x.mean(dim=(1, 2)), x.amax(dim=(1, 2))], dim=1)  # (B, 2, C)
            norm = 2
        else:
            assert self.queries is not None  # (TorchScript: Optional refinement)
            summaries = softmax_pool(x, self.queries)  # (B, K, C)
            pooled = torch.cat([x.mean(dim=(1, 2)).unsqueeze(1), summaries], dim=1)  # (B, K + 1, C)
            norm = pooled.shape[1]
        if self.hidden is not None:
            pooled = F.silu(self.hidden(pooled))
        u, v = self.proj(pooled).split([self.in_rank, self.out_rank], dim=-1)  # (B, Np, C_r), (B, Np, D_r)
        if self.act_in:
            u = F.silu(u)
        if self.act_out:
            v = F.silu(v)
        return u, v, self.in_features**-0.5 / norm

    def _outer_product_sum(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sum_p phi_out(x_p)^T phi_in(x_p): u (B, Np, C_r), v (B, Np, D_r) -> (B, D, C)."""
        if not torch.jit.is_scripting():  # TorchScript compiles the reference path only
            if not kernels.reference_enabled():  # the same sum, taken over the rank-reduced factors first
                return kernels.low_rank_outer_product_sum(u, v, self.input_basis, self.output_basis)
        p = u @ self.input_basis  # (B, Np, C)
        q = v @ self.output_basis  # (B, Np, D)
        return q.transpose(1, 2) @ p  # (B, D, C)


LINEAR_PREDICTORS = {
    # First-order statistics: one global average token gives a rank-1 update.
    "gap": partial(OuterProductPredictor, statistics="global"),
    # Second-order statistics with linear factor maps: dW is a linear function of sum_p x_p^T x_p.
    "linear": partial(OuterProductPredictor, act_in=False, act_out=False),
    # One-sided nonlinearity: SiLU on the input-side factor only.
    "nonlinear": partial(OuterProductPredictor, act_out=False),
    # Bilateral activation behind a deeper (two-layer) token projection.
    "deep": partial(OuterProductPredictor, depth=2),
    # The released models' predictor: SiLU on both factors ("bilateral activation").
    "bilateral": OuterProductPredictor,
    # Ours, not diluted by N: bilateral factors of the mean and K = 4 softmax-pooled summaries (learned queries).
    "query_pool": partial(OuterProductPredictor, statistics="query"),
    # Ours: bilateral factors of the channel-wise mean and max over the tokens.
    "mean_max": partial(OuterProductPredictor, statistics="mean_max"),
}


class DynamicLinear(nn.Linear):
    """A linear layer whose weight is W0 + dW(X), dW predicted per sample from global statistics of X.

    Takes tokens on a grid, (B, H, W, C), any H and W the predictor can pool (H, W >= 2 for the pooled
    predictors), and returns (B, H, W, D). It *is* an nn.Linear whose `weight` (D, C) and `bias` (D,) are the
    static W0 and b (the release stores W0 input-major; it is transposed at load time), plus a `predictor`:
    tools that know nn.Linear see what they expect. A LoRA adapter (peft) wraps it and adds its low-rank term to
    the output, and merging the adapter into `weight` is exact, because y = x (W0 + dW(x))^T + b is linear in W0.
    Code that swaps modules by exact type (`torch.ao.quantization.quantize_dynamic({nn.Linear})`) leaves it alone.

    Args:
        in_features: C.
        out_features: D.
        predictor: name in `LINEAR_PREDICTORS`: "gap", "linear", "nonlinear", "deep", "bilateral" (the paper's),
            "query_pool" or "mean_max" (ours: statistics that a few tokens can dominate).
        reduction: rank reduction r of the predictor's factors.
        odd_grid_pooling: "ceil" or "floor" (the reference code's) 2x2 pooling of odd grids, see `pool_2x2`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        predictor: str = "bilateral",
        reduction: int = 4,
        odd_grid_pooling: str = "ceil",
    ) -> None:
        if predictor not in LINEAR_PREDICTORS:
            raise ValueError(
                f"Unknown dynamic linear predictor {predictor!r}; choose one of {sorted(LINEAR_PREDICTORS)}."
            )
        super().__init__(in_features, out_features)  # weight (D, C) = W0, bias (D,) = b
        self.predictor_name = predictor
        self.predictor = LINEAR_PREDICTORS[predictor](
            in_features, out_features, reduction=reduction, odd_grid_pooling=odd_grid_pooling
        )
        self.min_grid = self.predictor.min_grid
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if "predictor" not in self._modules:  # called by nn.Linear.__init__ before the predictor exists
            return
        # The release initialises W0 *and* b with a truncated normal (std 0.02); b is not zero.
        trunc_normal_(self.weight, std=0.02)
        trunc_normal_(self.bias, std=0.02)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, predictor={self.predictor_name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, D)."""
        if not torch.jit.is_scripting():  # tracers skip the checks too: their sizes are symbolic
            if not kernels.reference_enabled_by_tracing():
                check_grid(x, self.in_features, self.min_grid, "DynamicLinear")
        if not torch.jit.is_scripting():
            if not kernels.reference_enabled():
                return self._forward_fast(x)
        weight = self.weight + self.predictor(x)  # (B, D, C)
        return torch.einsum("bhwc,bdc->bhwd", x, weight) + self.bias

    @torch.jit.unused
    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path: dW kept factored through the predictor's rank-C_r input basis where that is cheaper,
        else formed and applied as one batched GEMM. x: (B, H, W, C) -> (B, H, W, D)."""
        predictor = self.predictor
        # The profiler range names the predictor's ops for `weightformer profile` (free when not profiling).
        if kernels.low_rank_dynamic_linear_preferred(x, predictor.in_rank, predictor.out_rank, self.out_features) \
                and type(predictor) is OuterProductPredictor and not kernels.has_hooks(predictor):
            with _predictor_range():
                u, v, scale = predictor.factors(x)  # (B, Np, C_r), (B, Np, D_r)
                rows = kernels.low_rank_bounded_update(u, v, predictor.input_basis, predictor.output_basis, scale)
            return kernels.apply_low_rank_dynamic_weight(x, self.weight, self.bias, rows, predictor.input_basis)
        with _predictor_range():
            weight = self.weight + predictor(x)  # (B, D, C)
        return kernels.apply_dynamic_weight(x, weight, self.bias)  # one batched GEMM, bias included
