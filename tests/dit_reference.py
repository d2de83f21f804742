"""WeightFormer-DiT (the release's model/wfm_dit.py) as a plain functional program over the release's own key
names, for the tests.

Written from the paper's block and DiT's published formulas with explicit loops, index arithmetic and einsum, in
whatever dtype the inputs have (the tests use float64). Nothing is imported from `weightformer`. The 2x2 pooling of the
dynamic linear layers is `reference.pool_2x2_ref` (ceil mode: on odd grids this package keeps the last
row/column, where the release's code drops them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference import (
    adaptive_kernel_update_ref,
    bound_kernel,
    depthwise_conv_ref,
    dynamic_linear_ref,
    outer_product_update_ref,
    release_dynamic_mixer_keys,
)


def pos_embed_ref(dim: int, height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """(h, w, dim): token (i, j) gets [sin(j w_k), cos(j w_k), sin(i w_k), cos(i w_k)], w_k = 10000^(-k/(dim/4))."""
    quarter = dim // 4
    out = torch.empty(height, width, dim, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                out[i, j, k] = math.sin(j * omega)
                out[i, j, quarter + k] = math.cos(j * omega)
                out[i, j, 2 * quarter + k] = math.sin(i * omega)
                out[i, j, 3 * quarter + k] = math.cos(i * omega)
    return out.to(dtype)


def timestep_freq_ref(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """(N,) -> (N, dim): [cos(t f_k) for k < dim/2, sin(t f_k) for k < dim/2], f_k = exp(-ln(10000) k / (dim/2))."""
    half = dim // 2
    out = torch.empty(t.shape[0], dim, dtype=torch.float64)
    for n in range(t.shape[0]):
        for k in range(half):
            arg = float(t[n]) * math.exp(-math.log(10000.0) * k / half)
            out[n, k], out[n, half + k] = math.cos(arg), math.sin(arg)
    return out


def layer_norm_plain(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt((x - mean).pow(2).mean(-1, keepdim=True) + eps)


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def linear_ref(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """nn.Linear layout (out, in) of the release."""
    return torch.einsum("...i,oi->...o", x, sd[name + ".weight"]) + sd[name + ".bias"]


def _mod(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


def attention_ref(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, heads: int) -> torch.Tensor:
    """Multi-head softmax self-attention over the h*w tokens of x (N, h, w, D), one head at a time."""
    n, h, w, d = x.shape
    qkv = linear_ref(x.reshape(n, h * w, d), sd, name + ".qkv")  # (N, L, 3D): q, k, v, each heads x D/heads
    q, k, v = qkv.split(d, dim=-1)
    hd = d // heads
    outs = []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        scores = torch.einsum("nld,nmd->nlm", q[..., sl], k[..., sl]) / math.sqrt(hd)
        outs.append(torch.einsum("nlm,nmd->nld", scores.softmax(-1), v[..., sl]))
    return linear_ref(torch.cat(outs, -1), sd, name + ".proj").reshape(n, h, w, d)


def dit_block_ref(sd: dict[str, torch.Tensor], i: int, x: torch.Tensor, c: torch.Tensor,
                  heads: int = 1) -> torch.Tensor:
    """One block, x (N, h, w, D) channels-last, c (N, D)."""
    p = f"blocks.{i}."
    shift1, scale1, gate1, shift2, scale2, gate2 = linear_ref(F.silu(c), sd, p + "adaLN_modulation.1").chunk(6, -1)
    if p + "token_mixer.qkv.weight" in sd:  # DiT's own block (the attention baseline), our key names, pre-norm
        x = x + gate1[:, None, None] * attention_ref(_mod(layer_norm_plain(x), shift1, scale1), sd,
                                                     p + "token_mixer", heads)
        h = gelu_tanh_ref(linear_ref(_mod(layer_norm_plain(x), shift2, scale2), sd, p + "mlp.fc1"))
        return x + gate2[:, None, None] * linear_ref(h, sd, p + "mlp.fc2")
    x = layer_norm_plain(x)
    h = _mod(x, shift1, scale1)
    if p + "dwc.w" in sd:  # dynamic block
        dk = bound_kernel(adaptive_kernel_update_ref(h, sd[p + "dwc.wfm.0.weight"], sd[p + "dwc.wfm.0.bias"],
                                                     sd[p + "dwc.wfm.2.weight"]))
        h = depthwise_conv_ref(h, sd[p + "dwc.w"][:, 0] + dk, sd[p + "dwc.b"])
    else:
        h = depthwise_conv_ref(h, sd[p + "dwc.weight"][:, 0], sd[p + "dwc.bias"])
    x = x + gate1[:, None, None] * h
    h = _mod(layer_norm_plain(x), shift2, scale2)
    if p + "linear1.w" in sd:
        delta = outer_product_update_ref(h, sd[p + "linear1.wfm.weight"], sd[p + "linear1.wfm.bias"],
                                         sd[p + "linear1.w1"], sd[p + "linear1.w2"])
        h = dynamic_linear_ref(h, sd[p + "linear1.w"], sd[p + "linear1.b"], delta)
    else:
        h = linear_ref(h, sd, p + "linear1")
    h = linear_ref(gelu_tanh_ref(h), sd, p + "linear2")
    return x + gate2[:, None, None] * h


def dit_forward_ref(
    sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, patch: int, heads: int = 1
) -> torch.Tensor:
    """WeightFormer-DiT's output (N, C_out, H, W) for latents x (N, C, H, W), timesteps t (N,), labels y (N,)."""
    dim = sd["x_embedder.proj.bias"].shape[0]
    tokens = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    tokens = tokens.permute(0, 2, 3, 1)  # (N, h, w, D)
    n, h, w, _ = tokens.shape
    tokens = tokens + pos_embed_ref(dim, h, w, x.dtype)
    t_freq = timestep_freq_ref(t).to(x.dtype)
    c = linear_ref(F.silu(linear_ref(t_freq, sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    c = c + sd["y_embedder.embedding_table.weight"][y]
    depth = 1 + max(int(key.split(".")[1]) for key in sd if key.startswith("blocks."))
    for i in range(depth):
        tokens = dit_block_ref(sd, i, tokens, c, heads)
    shift, scale = linear_ref(F.silu(c), sd, "final_layer.adaLN_modulation.1").chunk(2, -1)
    out = linear_ref(_mod(layer_norm_plain(tokens), shift, scale), sd, "final_layer.linear")  # (N, h, w, p*p*C)
    channels = out.shape[-1] // (patch * patch)
    image = torch.empty(n, channels, h * patch, w * patch, dtype=x.dtype)
    for a in range(patch):  # the linear's outputs are ordered (row in patch, column in patch, channel)
        for b in range(patch):
            for ch in range(channels):
                image[:, ch, a::patch, b::patch] = out[..., (a * patch + b) * channels + ch]
    return image


def dit_release_state_dict(
    hidden: int, depth: int, patch: int, in_channels: int = 4, num_classes: int = 10, learn_sigma: bool = True,
    pos_grid: int | None = 4, seed: int = 0, dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """A state dict in the release's DiT format (model/wfm_dit.py), random values; dynamic blocks (i + 2) % 3 == 0.

    `pos_grid`: include the release's fixed `pos_embed` buffer for that square token grid (None: leave it out).
    """
    gen = torch.Generator().manual_seed(seed)
    d, mlp = hidden, 4 * hidden
    out_ch = 2 * in_channels if learn_sigma else in_channels

    def rnd(*shape, scale=0.1):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    sd = {
        "x_embedder.proj.weight": rnd(d, in_channels, patch, patch, scale=0.3),
        "x_embedder.proj.bias": rnd(d),
        "t_embedder.mlp.0.weight": rnd(d, 256),
        "t_embedder.mlp.0.bias": rnd(d),
        "t_embedder.mlp.2.weight": rnd(d, d, scale=0.2),
        "t_embedder.mlp.2.bias": rnd(d),
        "y_embedder.embedding_table.weight": rnd(num_classes + 1, d, scale=0.5),
        "final_layer.linear.weight": rnd(patch * patch * out_ch, d, scale=0.2),
        "final_layer.linear.bias": rnd(patch * patch * out_ch),
        "final_layer.adaLN_modulation.1.weight": rnd(2 * d, d, scale=0.2),
        "final_layer.adaLN_modulation.1.bias": rnd(2 * d),
    }
    if pos_grid is not None:
        sd["pos_embed"] = pos_embed_ref(d, pos_grid, pos_grid).reshape(1, -1, d).float()  # a float32 buffer
    for i in range(depth):
        p = f"blocks.{i}."
        sd[p + "adaLN_modulation.1.weight"] = rnd(6 * d, d, scale=0.2)
        sd[p + "adaLN_modulation.1.bias"] = rnd(6 * d, scale=0.3)
        if (i + 2) % 3 == 0:
            sd.update(release_dynamic_mixer_keys(p, d, mlp, rnd))
        else:
            sd.update({
                p + "dwc.weight": rnd(d, 1, 3, 3, scale=0.3),
                p + "dwc.bias": rnd(d),
                p + "linear1.weight": rnd(mlp, d, scale=0.2),
                p + "linear1.bias": rnd(mlp),
            })
        sd[p + "linear2.weight"] = rnd(d, mlp, scale=0.2)
        sd[p + "linear2.bias"] = rnd(d)
    return sd
