"""Dynamic linear layer: y = X (W0 + dW(X)) + b, with dW predicted from compressed global statistics.

(Or y = X W0 + b + f(X) for the predictors that are not one weight per sample, see the end of this docstring.)

WeightFormer (He, Han, Huang, "Linear-Time Global Visual Modeling without Explicit Attention", 2026) reads
softmax attention as an MLP whose weights are predicted from the input, and replaces it by layers whose weights
are a static part plus an update predicted from length-independent statistics of the whole input. Every step
here is linear in the number of tokens N = H*W, yet every output token depends on every input token.

The paper's predictors, and the first two of ours, share one form: tokens are pooled, each pooled token x_p
gives an input-side factor phi_in(x_p) (C) and an output-side factor phi_out(x_p) (D), and the update is the sum
of their outer products,

    dW = sum_p phi_in(x_p)^T phi_out(x_p) * C^(-1/2) / N          (C x D, stored here transposed, D x C)

followed by column normalisation dW[:, j] <- dW[:, j] / (||dW[:, j]|| + 1) (bounded amplitude, direction kept).
They differ in the statistics (pooled tokens or one global average) and the factor maps; see `LINEAR_PREDICTORS`.

The released statistics average: a small object's share of dW is its share of the image, so a few informative
tokens are diluted among many uninformative ones (see benchmarks/PROBES.md). Two statistics that are not, and
stay linear in N, are ours: "query_pool" (K summaries z_k, each a softmax over the N positions of a learned
query's scores, see `softmax_pool`, plus the mean; P = K + 1 summaries) and "mean_max" (the channel-wise mean
and max over the tokens; P = 2). Both divide by the number of summaries P instead of N:

    dW = sum_p phi_in(z_p)^T phi_out(z_p) * C^(-1/2) / P

Read as attention, the outer-product form is y_n = x_n W0 + sum_p (x_n . phi_in(x_p)) phi_out(x_p) / N:
unnormalised linear attention (query x_n, key phi_in, value phi_out) divided by the token count. What softmax
attention has and this lacks is a normaliser per query, which lets one token's output rest on a few others.
Two more predictors of ours add it, still linear in N. They are not of the form x (W0 + dW) with one dW per
sample: they return an additive output term, y = x W0 + b + f(x) (`predicts_output`), and `DynamicLinear`
dispatches on that.

- "agent" (Agent Attention, Han et al., ECCV 2024; the induced set attention block of the Set Transformer,
  Lee et al., ICML 2019): K agents summarise the tokens with a softmax over the N positions each, and every
  token reads them through a softmax over the K agents, its own:

      z_k = sum_n softmax_n(x_n . q_k) x_n                                  (B, K, C)
      y_n = x_n W0 + b + sum_k softmax_k(x_n W_q . z_k W_k / sqrt(d)) z_k W_v W_o

  a K-unit MLP per sample whose hidden layer has a softmax per token: "attention is a dynamic MLP" with K
  hidden units instead of N. Cost O(N K C + N C d + N K D).
- "normalized" (FLatten Transformer's focused linear attention, Han et al., ICCV 2023; MLLA, Han et al.,
  NeurIPS 2024): the outer-product sum with a per-token normaliser in place of 1/N and non-negative, focused
  features phi (`focused_map`) that can be exactly zero on background tokens,

      y_n = x_n W0 + b + q_n (sum_p k_p^T v_p) / (q_n . sum_p k_p + eps)
      q_n = phi(x_n W_q),  k_p = phi(x_p W_k),  v_p = SiLU(x_p A + a) W2    (the release's output factor)

  each token's term a convex combination of the values v_p. Cost O(N C d + N C D_r + N d D).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch.profiler import record_function

from .. import kernels
from .common import bound_update, check_grid, pool_2x2, softmax_pool

__all__ = [
    "DynamicLinear",
    "OuterProductPredictor",
    "AgentPredictor",
    "NormalizedOuterProductPredictor",
    "LINEAR_PREDICTORS",
    "focused_map",
    "PREDICTOR_RANGE",
]

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

    predicts_output = False  # a weight update dW (B, D, C); see `DynamicLinear`

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
        return self.bounded_update(u, v, scale)

    def bounded_update(self, u: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """dW (B, D, C), column-bounded, from the factors u (B, Np, C_r), v (B, Np, D_r) and the scale of `factors`."""
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
        if not torch.jit.is_scripting():  # on oneDNN's GEMMs where they apply; TorchScript compiles the plain calls
            if self.hidden is not None:
                pooled = F.silu(kernels.linear_layer(self.hidden, pooled))
            projected = kernels.linear_layer(self.proj, pooled)  # (B, Np, C_r + D_r)
        else:
            if self.hidden is not None:
                pooled = F.silu(self.hidden(pooled))
            projected = self.proj(pooled)
        u, v = projected.split([self.in_rank, self.out_rank], dim=-1)  # (B, Np, C_r), (B, Np, D_r)
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


def focused_map(x: torch.Tensor, focusing: float = 3.0) -> torch.Tensor:
    """FLatten Transformer's focused feature map over the last dimension: non-negative, norm kept, sharpened.

        phi(x) = ||r|| * r^p / ||r^p||,   r = ReLU(x),   phi(x) = 0 where r = 0

    The power p > 1 pulls r^p towards its largest components (a softmax-like focus), the two norms keep the
    length of r. Computed on s = r / max(r), which leaves phi unchanged: s^p neither underflows nor overflows in
    low precision, and ||s^p|| >= 1 unless r = 0, so clamping it at 1 only turns 0 / 0 into 0. (Where r = 0,
    max(r) is replaced by 1: s = 0 either way, in any dtype, and TorchScript compiles it.)
    """
    r = F.relu(x)
    top = r.amax(dim=-1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    s = (r / top).pow(focusing)
    length = torch.linalg.vector_norm(r, dim=-1, keepdim=True)  # ||r||
    return s * (length / torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min(1.0))


class AgentPredictor(nn.Module):
    """Predicts an additive output (B, H, W, D): K agent summaries of the tokens, read by each token with a softmax.

    With inner width d = C / r and K learned agent queries q_k (C),

        z_k = sum_n softmax_n(x_n . q_k) x_n                       agents, softmax over the N tokens (`softmax_pool`)
        f(x)_n = sum_k softmax_k(x_n W_q . z_k W_k / sqrt(d)) z_k W_v W_o      softmax over the K agents, per token

    W_q, W_k, W_v: (C, d), W_o: (d, D). Agent Attention's two softmaxes (Han et al., 2024) with the Set
    Transformer's learned inducing points as agents (ISAB, Lee et al., 2019); neither softmax is diluted by N:
    one token can take an agent whatever N is, and each token picks its own mix of agents. Agent Attention scores
    tokens as (x_n W_k) . q_k; that is x_n . (W_k q_k), one learned vector per agent, which is what q_k is here
    (and the summaries are projected after pooling, K rows instead of N).

    K = 8: agents are hidden units of a per-sample MLP, so K sets how many separate things a layer can attend to
    (two distant objects and their backgrounds need a few, ISAB uses 16-32 inducing points for sets) and the
    per-token read-out costs N K D, 8 / C of the static layer's N C D (4 % at C = 192).
    Initialisation: the agent queries and the read-out's W_q, W_k are drawn with std logit_std / sqrt(C), so on
    LayerNorm-ed tokens (norm ~sqrt(C)) both softmaxes start with logits of std ~logit_std whatever the width:
    with the default 3.5, at about 85 % of the uniform entropy over tokens and over agents (width 48, the
    probes' images). With the release's std 0.02 instead, both softmaxes start uniform (entropy 1.000 of log N
    and log K): every agent is the mean token, every token reads their mean, the layer starts as the release's
    diluted mean statistics, and on the probes it never left the plateau (benchmarks/PROBES.md, "Round two";
    `benchmarks/agent_init.py` measures both). W_v and W_o keep std 0.02, not zero: the term starts a few
    percent of x W0 (the layer close to the static one) while every output depends on every input and every
    parameter gets a gradient from the first step (a zero W_o would stop the gradient to all the others). The
    model's own initialisation leaves these alone (`initialises_itself`).

    Args:
        in_features: C.
        out_features: D.
        reduction: r, the inner width d = C / r.
        odd_grid_pooling: accepted for the interface all predictors share; the agents see every token, there is
            no 2x2 pooling.
        num_agents: K.
        logit_std: the softmaxes' logit scale at initialisation (see above).
    """

    predicts_output = True  # an additive output term (B, H, W, D); see `DynamicLinear`
    initialises_itself = True  # a model's blanket nn.Linear initialisation must not redraw W_q, W_k

    def __init__(
        self,
        in_features: int,
        out_features: int,
        reduction: int = 4,
        odd_grid_pooling: str = "ceil",
        num_agents: int = 8,
        logit_std: float = 3.5,
    ) -> None:
        super().__init__()
        if in_features % reduction:
            raise ValueError(f"in_features ({in_features}) must be divisible by the reduction rate {reduction}.")
        dim = in_features // reduction
        self.in_features = in_features
        self.out_features = out_features
        self.ceil_mode = odd_grid_pooling == "ceil"
        self.min_grid = 1  # no pooling: any grid
        self.scale = dim**-0.5
        self.logit_std = logit_std
        self.agent_queries = nn.Parameter(torch.empty(num_agents, in_features))  # q_k, random: equal ones stay equal
        self.query_proj = nn.Linear(in_features, dim, bias=False)  # W_q
        self.key_proj = nn.Linear(in_features, dim, bias=False)  # W_k
        # No value bias: the read-out weights sum to 1, so it would add a constant, the layer's bias b.
        self.value_proj = nn.Linear(in_features, dim, bias=False)  # W_v
        self.output_basis = nn.Parameter(torch.empty(dim, out_features))  # W_o
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.logit_std / math.sqrt(self.in_features)
        for weight in (self.agent_queries, self.query_proj.weight, self.key_proj.weight):
            trunc_normal_(weight, std=std, a=-4 * std, b=4 * std)
        for weight in (self.value_proj.weight, self.output_basis):
            trunc_normal_(weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> f(x): (B, H, W, D), the term added to x W0^T + b."""
        agents = softmax_pool(x, self.agent_queries)  # (B, K, C)
        keys = self.key_proj(agents)  # (B, K, d)
        values = self.value_proj(agents) @ self.output_basis  # (B, K, D)
        queries = self.query_proj(x.flatten(1, 2))  # (B, N, d)
        weights = (queries @ keys.transpose(1, 2) * self.scale).softmax(dim=-1)  # (B, N, K), rows sum to 1
        return (weights @ values).reshape(x.shape[0], x.shape[1], x.shape[2], -1)  # (B, H, W, D)


class NormalizedOuterProductPredictor(nn.Module):
    """Predicts an additive output (B, H, W, D): the outer-product update with a per-token normaliser.

    With d = C / r, D_r = D / r and the focused feature map phi (`focused_map`, non-negative),

        q_n = phi(x_n W_q),   k_p = phi(x_p W_k),   v_p = SiLU(x_p A + a) W2
        f(x)_n = q_n (sum_p k_p^T v_p) / (q_n . sum_p k_p + eps)

    W_q, W_k: (C, d); A: (C, D_r), a: (D_r,); W2: (D_r, D), the release's output factor. Where the release
    divides the sum of outer products by N, FLatten Transformer (Han et al., 2023) and MLLA (Han et al., 2024)
    divide by each query's total match: f(x)_n is a convex combination of the values, weighted by q_n . k_p.
    A token whose key features are zero (background, after the ReLU) adds nothing to either sum, so adding
    background tokens leaves every f(x)_n as it was, where the release's 1/N shrinks the update.

    The statistics are all N tokens, not the release's 2x2-pooled ones (both linear in N): pooling would average
    a one-token object with three background tokens before phi, the dilution this predictor is meant to remove,
    and mix background into every key. Four times the pooled cost for the keys and values; the sums are taken
    in the reduced space, d x D_r, before W2 expands them (cost O(N C d + N C D_r + N d D) in all).

    The projections start as the release's factors (truncated normal, std 0.02, zero bias): the term is a
    weighted mean of small values, the layer close to the static one with a global receptive field at once.

    Args:
        in_features: C.
        out_features: D.
        reduction: r; C and D must both be divisible by it.
        odd_grid_pooling: accepted for the interface all predictors share; the statistics are not pooled.
        focusing: FLatten's focusing power p.
        eps: added to the normaliser (FLatten's 1e-6); a token whose query features are all zero gets f = 0.
    """

    predicts_output = True  # an additive output term (B, H, W, D); see `DynamicLinear`

    def __init__(
        self,
        in_features: int,
        out_features: int,
        reduction: int = 4,
        odd_grid_pooling: str = "ceil",
        focusing: float = 3.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if in_features % reduction or out_features % reduction:
            raise ValueError(
                f"in_features ({in_features}) and out_features ({out_features}) must be divisible by "
                f"the reduction rate {reduction}."
            )
        dim, out_rank = in_features // reduction, out_features // reduction
        self.in_features = in_features
        self.out_features = out_features
        self.ceil_mode = odd_grid_pooling == "ceil"
        self.min_grid = 1  # no pooling: any grid
        self.focusing = focusing
        self.eps = eps
        # No bias on the feature projections: a zero token has zero features, a background token adds nothing.
        self.query_proj = nn.Linear(in_features, dim, bias=False)  # W_q
        self.key_proj = nn.Linear(in_features, dim, bias=False)  # W_k
        self.value_proj = nn.Linear(in_features, out_rank)  # A, a
        self.output_basis = nn.Parameter(torch.empty(out_rank, out_features))  # W2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.query_proj, self.key_proj, self.value_proj):
            trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(self.value_proj.bias)
        trunc_normal_(self.output_basis, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> f(x): (B, H, W, D), the term added to x W0^T + b."""
        tokens = x.flatten(1, 2)  # (B, N, C)
        q = focused_map(self.query_proj(tokens), self.focusing)  # (B, N, d)
        k = focused_map(self.key_proj(tokens), self.focusing)  # (B, N, d)
        v = F.silu(self.value_proj(tokens))  # (B, N, D_r)
        kv = (k.transpose(1, 2) @ v) @ self.output_basis  # (B, d, D): sum_p k_p^T v_p, reduced first
        normaliser = q @ k.sum(dim=1).unsqueeze(-1) + self.eps  # (B, N, 1): q_n . sum_p k_p
        return ((q @ kv) / normaliser).reshape(x.shape[0], x.shape[1], x.shape[2], -1)  # (B, H, W, D)


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
    # Ours, with a normaliser per token (see the module docstring): K = 8 agents, two softmaxes.
    "agent": AgentPredictor,
    # Ours: the outer-product sum over all tokens, focused features, divided per token instead of by N.
    "normalized": NormalizedOuterProductPredictor,
}


class DynamicLinear(nn.Linear):
    """A linear layer whose weight is W0 + dW(X), dW predicted per sample from global statistics of X.

    Takes tokens on a grid, (B, H, W, C), any H and W the predictor can pool (H, W >= 2 for the pooled
    predictors), and returns (B, H, W, D). It *is* an nn.Linear whose `weight` (D, C) and `bias` (D,) are the
    static W0 and b (the release stores W0 input-major; it is transposed at load time), plus a `predictor`:
    tools that know nn.Linear see what they expect. A LoRA adapter (peft) wraps it and adds its low-rank term to
    the output, and merging the adapter into `weight` is exact, because y = x (W0 + dW(x))^T + b is linear in W0.
    Code that swaps modules by exact type (`torch.ao.quantization.quantize_dynamic({nn.Linear})`) leaves it alone.

    A predictor returns one of two things, as its `predicts_output` says: a weight update dW (B, D, C), and
    y = x (W0 + dW)^T + b; or an additive output term f(x) (B, H, W, D) for predictors that are not one weight
    per sample ("agent", "normalized"), and y = x W0^T + b + f(x). Both are linear in W0.

    Args:
        in_features: C.
        out_features: D.
        predictor: name in `LINEAR_PREDICTORS`: "gap", "linear", "nonlinear", "deep", "bilateral" (the paper's),
            "query_pool" or "mean_max" (ours: statistics that a few tokens can dominate), "agent" or
            "normalized" (ours: a normaliser per token, see the module docstring).
        reduction: rank reduction r of the predictor's factors (the inner width C / r of "agent" and
            "normalized").
        odd_grid_pooling: "ceil" or "floor" (the reference code's) 2x2 pooling of odd grids, see `pool_2x2`;
            "agent" and "normalized" do not pool.
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
        self.predicts_output = self.predictor.predicts_output
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
        if self.predicts_output:  # y = x W0^T + b + f(x)
            return F.linear(x, self.weight, self.bias) + self.predictor(x)  # (B, H, W, D)
        if not torch.jit.is_scripting():
            if not kernels.reference_enabled():
                return self._forward_fast(x)
        weight = self.weight + self.predictor(x)  # (B, D, C)
        return torch.einsum("bhwc,bdc->bhwd", x, weight) + self.bias

    @torch.jit.unused
    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path (`kernels.dynamic_linear_plan`): dW kept factored, through its rank-C_r rows or through the
        pooled tokens, where that is cheaper, else formed and applied as one batched GEMM.
        x: (B, H, W, C) -> (B, H, W, D)."""
        predictor = self.predictor
        # The profiler range names the predictor's ops for `weightformer profile` (free when not profiling).
        if type(predictor) is not OuterProductPredictor or kernels.has_hooks(predictor):
            with _predictor_range():
                weight = self.weight + predictor(x)  # (B, D, C)
            return kernels.apply_dynamic_weight(x, weight, self.bias)  # one batched GEMM, bias included
        basis = predictor.input_basis
        with _predictor_range():
            u, v, scale = predictor.factors(x)  # (B, Np, C_r), (B, Np, D_r)
            plan = kernels.dynamic_linear_plan(x, u.shape[1], predictor.in_rank, predictor.out_rank, self.out_features)
            if plan == "pooled":
                values = kernels.pooled_bounded_update(u, v, basis, predictor.output_basis, scale)  # (B, Np, D)
            elif plan == "rows":
                rows = kernels.low_rank_bounded_update(u, v, basis, predictor.output_basis, scale)  # (B, C_r, D)
            else:
                weight = self.weight + predictor.bounded_update(u, v, scale)  # (B, D, C)
        if plan == "pooled":
            return kernels.apply_pooled_dynamic_weight(x, self.weight, self.bias, u, values, basis)
        if plan == "rows":
            return kernels.apply_low_rank_dynamic_weight(x, self.weight, self.bias, rows, basis)
        return kernels.apply_dynamic_weight(x, weight, self.bias)
