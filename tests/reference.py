"""Independent, deliberately plain statements of the paper's formulas, for the tests to hold the package to.

Everything here is written from the paper's formulas and the release's code (model/wfm.py) with explicit loops,
index arithmetic and einsum, in whatever dtype the inputs have (the tests use float64). Nothing is imported from
`weightformer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pool_2x2_ref(grid: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C): each window averaged over the tokens it holds."""
    _, height, width, _ = grid.shape
    rows = []
    for i in range(math.ceil(height / 2)):
        cols = []
        for j in range(math.ceil(width / 2)):
            cols.append(grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2)))
        rows.append(torch.stack(cols, dim=1))
    return torch.stack(rows, dim=1)


def adaptive_pool_ref(grid: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, k, k): region (i, j) spans rows floor(iH/k) .. ceil((i+1)H/k)."""
    _, height, width, _ = grid.shape
    out = torch.empty(grid.shape[0], grid.shape[-1], k, k, dtype=grid.dtype)
    for i in range(k):
        r0, r1 = (i * height) // k, -(-((i + 1) * height) // k)
        for j in range(k):
            c0, c1 = (j * width) // k, -(-((j + 1) * width) // k)
            out[:, :, i, j] = grid[:, r0:r1, c0:c1].mean(dim=(1, 2))
    return out


def softmax_pool_ref(grid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C), queries (K, C) -> (B, K, C): z_k = sum_n exp(s_nk) x_n / sum_n exp(s_nk), s_nk = x_n . q_k.

    Written token by token with an explicit exponential (shifted by the maximum score, which cancels)."""
    batch, height, width, channels = grid.shape
    out = torch.zeros(batch, queries.shape[0], channels, dtype=grid.dtype)
    for b in range(batch):
        for k in range(queries.shape[0]):
            scores = [torch.dot(grid[b, i, j], queries[k]) for i in range(height) for j in range(width)]
            top = torch.stack(scores).max()
            weights = [torch.exp(s - top) for s in scores]
            total = sum(weights)
            for (i, j), w in zip([(i, j) for i in range(height) for j in range(width)], weights, strict=True):
                out[b, k] += w / total * grid[b, i, j]
    return out


def bound_columns(delta_cd: torch.Tensor) -> torch.Tensor:
    """delta (B, C, D): each column j divided by (||delta[:, :, j]|| + 1)."""
    return delta_cd / (delta_cd.pow(2).sum(dim=1, keepdim=True).sqrt() + 1)


def outer_product_update_ref(
    grid: torch.Tensor,
    proj_weight_oc: torch.Tensor,
    proj_bias: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    statistics: str = "pooled",
    act_in: bool = True,
    act_out: bool = True,
    hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """dW (B, C, D), input-major as in the release's DynLinear (x @ W0), for the outer-product family of linear
    predictors."""
    batch, height, width, channels = grid.shape
    n = height * width
    if statistics == "pooled":
        pooled = pool_2x2_ref(grid).reshape(batch, -1, channels)
        norm = n
    elif statistics == "query":
        tokens = grid.reshape(batch, n, channels)
        pooled = torch.cat([tokens.mean(dim=1, keepdim=True), softmax_pool_ref(grid, queries)], dim=1)
        norm = pooled.shape[1]
    elif statistics == "mean_max":
        tokens = grid.reshape(batch, n, channels)
        pooled = torch.stack([tokens.mean(dim=1), tokens.max(dim=1).values], dim=1)
        norm = 2
    else:
        pooled = grid.reshape(batch, n, channels).mean(dim=1, keepdim=True)
        norm = 1
    if hidden is not None:
        pooled = F.silu(torch.einsum("bpc,oc->bpo", pooled, hidden[0]) + hidden[1])
    uv = torch.einsum("bpc,oc->bpo", pooled, proj_weight_oc) + proj_bias
    c_r = w1.shape[0]
    u, v = uv[..., :c_r], uv[..., c_r:]
    u = F.silu(u) if act_in else u
    v = F.silu(v) if act_out else v
    p = torch.einsum("bpr,rc->bpc", u, w1)
    q = torch.einsum("bps,sd->bpd", v, w2)
    delta = torch.einsum("bpc,bpd->bcd", p, q) / math.sqrt(channels) / norm
    return bound_columns(delta)


def dynamic_linear_ref(grid: torch.Tensor, w0_cd: torch.Tensor, bias: torch.Tensor, delta_cd: torch.Tensor):
    """y = X (W0 + dW) + b, X (B, H, W, C), W0 (C, D) input-major -> (B, H, W, D)."""
    return torch.einsum("bhwc,bcd->bhwd", grid, w0_cd + delta_cd) + bias


def agent_output_ref(
    grid: torch.Tensor,
    agent_queries: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
) -> torch.Tensor:
    """The "agent" predictor's additive term f(x) (B, H, W, D), token by token and agent by agent.

        z_k = sum_n exp(x_n . q_k) x_n / sum_m exp(x_m . q_k)
        f_n = sum_k exp(s_nk) (z_k W_v W_o) / sum_j exp(s_nj),   s_nk = (x_n W_q) . (z_k W_k) / sqrt(d)

    q: (K, C); W_q, W_k, W_v: (C, d) input-major; W_o: (d, D)."""
    batch, height, width, channels = grid.shape
    num_agents, dim = agent_queries.shape[0], w_q.shape[1]
    positions = [(i, j) for i in range(height) for j in range(width)]
    out = torch.zeros(batch, height, width, w_o.shape[1], dtype=grid.dtype)
    for b in range(batch):
        agents = []
        for k in range(num_agents):
            scores = torch.stack([torch.dot(grid[b, i, j], agent_queries[k]) for i, j in positions])
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            agents.append(sum(w * grid[b, i, j] for w, (i, j) in zip(weights, positions, strict=True)))
        keys = [torch.einsum("c,cd->d", z, w_k) for z in agents]
        values = [torch.einsum("c,ce,ef->f", z, w_v, w_o) for z in agents]
        for i, j in positions:
            query = torch.einsum("c,cd->d", grid[b, i, j], w_q)
            scores = torch.stack([torch.dot(query, key) / math.sqrt(dim) for key in keys])
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            out[b, i, j] = sum(w * v for w, v in zip(weights, values, strict=True))
    return out


def focused_map_ref(x: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """FLatten's focused map over the last dimension, ||r|| r^p / ||r^p|| with r = ReLU(x), and 0 where r = 0."""
    r = x.clamp_min(0)
    rp = r**p
    rp_norm = rp.pow(2).sum(dim=-1, keepdim=True).sqrt()
    r_norm = r.pow(2).sum(dim=-1, keepdim=True).sqrt()
    return torch.where(rp_norm > 0, r_norm * rp / torch.where(rp_norm > 0, rp_norm, 1.0), 0.0)


def normalized_output_ref(
    grid: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    value_weight_oc: torch.Tensor,
    value_bias: torch.Tensor,
    w2: torch.Tensor,
    p: float = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The "normalized" predictor's additive term f(x) (B, H, W, D) over all N tokens, with explicit indices:

        f_n = sum_m (q_n . k_m) v_m / (sum_m q_n . k_m + eps),   q = phi(x W_q), k = phi(x W_k),
        v = SiLU(x A^T + a) W2

    W_q, W_k: (C, d) input-major; A: (D_r, C) as nn.Linear stores it; W2: (D_r, D)."""
    batch, height, width, channels = grid.shape
    tokens = grid.reshape(batch, height * width, channels)
    q = focused_map_ref(torch.einsum("bnc,cd->bnd", tokens, w_q), p)
    k = focused_map_ref(torch.einsum("bmc,cd->bmd", tokens, w_k), p)
    v = torch.einsum("bms,sf->bmf", F.silu(torch.einsum("bmc,sc->bms", tokens, value_weight_oc) + value_bias), w2)
    match = torch.einsum("bnd,bmd->bnm", q, k)  # (B, N, N): the quadratic form, for reference only
    out = torch.einsum("bnm,bmf->bnf", match, v) / (match.sum(dim=-1, keepdim=True) + eps)
    return out.reshape(batch, height, width, -1)


def depthwise_conv_ref(grid: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """'same' zero-padded depthwise conv as a sum of shifted products.

    grid (B, H, W, C); kernel (B, C, k, k) per sample or (C, k, k) shared; bias (C,).
    """
    if kernel.ndim == 3:
        kernel = kernel.unsqueeze(0).expand(grid.shape[0], -1, -1, -1)
    _, height, width, _ = grid.shape
    k = kernel.shape[-1]
    r = k // 2
    padded = F.pad(grid, (0, 0, r, r, r, r))  # pad W then H
    out = torch.zeros_like(grid)
    for i in range(k):
        for j in range(k):
            out = out + padded[:, i : i + height, j : j + width] * kernel[:, None, None, :, i, j]
    return out + bias


def bound_kernel(delta: torch.Tensor) -> torch.Tensor:
    """delta (B, C, k, k) / (||delta||_F over the taps + 1)."""
    return delta / (delta.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1)


def adaptive_kernel_update_ref(grid, fc1_w, fc1_b, fc2_w, k=3):
    """The paper's spatially adaptive prediction (the release's DynCnn): 1x1 conv -> exact GELU -> 1x1 conv on
    the k x k pooled map."""
    pooled = adaptive_pool_ref(grid, k)  # (B, C, k, k)
    h = torch.einsum("bcij,oc->boij", pooled, fc1_w.flatten(1)) + fc1_b[:, None, None]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return torch.einsum("bcij,oc->boij", h, fc2_w.flatten(1))


def layer_norm_ref(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_ref(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def release_forward_ref(sd: dict[str, torch.Tensor], images: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """The released classifier (README "Models") written against the release's own key names (README "Released
    checkpoints").

    The 2x2 pooling is the reference code's plain reshape-and-mean, which floors odd grids (drops the last
    row/column): on even grids it equals the package's default ceil pooling, on odd ones its "floor" option.
    """
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    batch, channels, height, width = x.shape
    x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    x = layer_norm_ref(x, sd["init_norm.weight"], sd["init_norm.bias"])
    depth = 1 + max(int(key.split(".")[1]) for key in sd if key.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        if p + "norm1.weight" in sd:  # dynamic block
            x = layer_norm_ref(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
            dk = bound_kernel(
                adaptive_kernel_update_ref(
                    x, sd[p + "dwc.wfm.0.weight"], sd[p + "dwc.wfm.0.bias"], sd[p + "dwc.wfm.2.weight"]
                )
            )
            x = x + depthwise_conv_ref(x, sd[p + "dwc.w"][:, 0] + dk, sd[p + "dwc.b"])
            h = layer_norm_ref(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            even = h[:, : height // 2 * 2, : width // 2 * 2]
            pooled = even.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(dim=(2, 4))
            pooled = pooled.reshape(batch, -1, channels)
            uv = torch.einsum("bpc,oc->bpo", pooled, sd[p + "linear1.wfm.weight"]) + sd[p + "linear1.wfm.bias"]
            c_r = sd[p + "linear1.w1"].shape[0]
            pm = torch.einsum("bpr,rc->bpc", F.silu(uv[..., :c_r]), sd[p + "linear1.w1"])
            qm = torch.einsum("bps,sd->bpd", F.silu(uv[..., c_r:]), sd[p + "linear1.w2"])
            delta = torch.einsum("bpc,bpd->bcd", pm, qm) / math.sqrt(channels) / (height * width)
            h = dynamic_linear_ref(h, sd[p + "linear1.w"], sd[p + "linear1.b"], bound_columns(delta))
        else:  # static block
            x = x + depthwise_conv_ref(x, sd[p + "dwc.weight"][:, 0], sd[p + "dwc.bias"])
            h = layer_norm_ref(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            h = torch.einsum("bhwc,dc->bhwd", h, sd[p + "linear1.weight"]) + sd[p + "linear1.bias"]
        h = torch.einsum("bhwd,cd->bhwc", gelu_ref(h), sd[p + "linear2.weight"]) + sd[p + "linear2.bias"]
        x = x + h
    x = layer_norm_ref(x, sd["norm.weight"], sd["norm.bias"]).mean(dim=(1, 2))
    return x @ sd["head.weight"].t() + sd["head.bias"]


def release_dynamic_mixer_keys(prefix: str, c: int, hidden: int, rnd) -> dict[str, torch.Tensor]:
    """A dynamic block's dynamic conv (`dwc.*`) and dynamic linear (`linear1.*`) in the release's key names,
    C -> hidden, drawn by `rnd(*shape, scale=...)`; the classifier's and WeightFormer-DiT's dynamic blocks share
    them (the release's model/wfm.py and model/wfm_dit.py)."""
    return {
        prefix + "dwc.w": rnd(c, 1, 3, 3, scale=0.3),
        prefix + "dwc.b": rnd(c),
        prefix + "dwc.wfm.0.weight": rnd(c, c, 1, 1, scale=0.3),
        prefix + "dwc.wfm.0.bias": rnd(c),
        prefix + "dwc.wfm.2.weight": rnd(c, c, 1, 1, scale=0.3),
        prefix + "linear1.w": rnd(c, hidden),
        prefix + "linear1.b": rnd(hidden),
        prefix + "linear1.wfm.weight": rnd(c // 4 + c, c, scale=0.3),
        prefix + "linear1.wfm.bias": rnd(c // 4 + c),
        prefix + "linear1.w1": rnd(c // 4, c, scale=0.5),
        prefix + "linear1.w2": rnd(c, hidden, scale=0.5),
    }


def release_state_dict(
    width: int, depth: int, num_classes: int = 1000, patch: int = 16, seed: int = 0, dtype=torch.float32
) -> dict[str, torch.Tensor]:
    """A state dict in the release's format (README "Released checkpoints"), random values, dynamic blocks
    (i + 2) % 3 == 0."""
    gen = torch.Generator().manual_seed(seed)
    c, hidden = width, 4 * width

    def rnd(*shape, scale=0.1):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    sd = {
        "patch_embed.proj.weight": rnd(c, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": rnd(c),
        "init_norm.weight": 1 + rnd(c),
        "init_norm.bias": rnd(c),
        "norm.weight": 1 + rnd(c),
        "norm.bias": rnd(c),
        "head.weight": rnd(num_classes, c),
        "head.bias": rnd(num_classes),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        if (i + 2) % 3 == 0:
            sd.update(
                {
                    p + "norm1.weight": 1 + rnd(c),
                    p + "norm1.bias": rnd(c),
                    **release_dynamic_mixer_keys(p, c, hidden, rnd),
                }
            )
        else:
            sd.update(
                {
                    p + "dwc.weight": rnd(c, 1, 3, 3, scale=0.3),
                    p + "dwc.bias": rnd(c),
                    p + "linear1.weight": rnd(hidden, c),
                    p + "linear1.bias": rnd(hidden),
                }
            )
        sd.update(
            {
                p + "norm2.weight": 1 + rnd(c),
                p + "norm2.bias": rnd(c),
                p + "linear2.weight": rnd(c, hidden),
                p + "linear2.bias": rnd(c),
            }
        )
    return sd
