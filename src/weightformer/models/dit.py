"""WeightFormer-DiT: class-conditional latent diffusion with WeightFormer blocks instead of attention.

Paper: "Linear-Time Global Visual Modeling without Explicit Attention" (He, Han, Huang, arXiv 2605.01711, 2026),
on top of DiT ("Scalable Diffusion Models with Transformers", Peebles and Xie, ICCV 2023).

DiT's network (patch embedding, fixed 2-D sin-cos position embedding, timestep and label embedders, adaLN-Zero
conditioning, learned variance) with each block's self-attention replaced by a depthwise 3x3 conv. Every third
block is dynamic, as in the classifier: its depthwise conv and its first MLP layer carry weights W0 + dW(X)
predicted from global statistics of the input (`weightformer.layers`), so every token sees the whole latent.

Tokens stay channels-last, (N, h, w, D), from the patch embedding to the final layer. Unlike the release (square
latents only), any latent height and width divisible by the patch size work: the position embedding is built
for the actual grid.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..layers import DynamicDWConv2d, DynamicLinear
from ..layers.common import to_nhwc
from .checkpoint import CheckpointMismatchError, load_checkpoint, read_state_dict
from .weightformer import RELEASE_BLOCK_KEY_RULES, DepthwiseConv, dynamic_block_indices, translate_release_keys

__all__ = [
    "WeightFormerDiT",
    "DiTBlock",
    "DIT_CONFIGS",
    "sincos_pos_embed_2d",
    "dit_checkpoint_filter_fn",
    "load_dit_checkpoint",
]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of channels-last tokens: x (N, h, w, D), shift and scale (N, D).

    x * (1 + scale) + shift in one pass over the tokens (addcmul) instead of two: the same product and sum (where
    the CPU fuses them into one multiply-add, rounded once: a float32 ulp or so).
    """
    return torch.addcmul(shift[:, None, None, :], x, 1 + scale[:, None, None, :])


def gated_residual(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + gate * branch, adaLN-Zero's gated residual, in one pass: x, branch (N, h, w, D), gate (N, D)."""
    return torch.addcmul(x, gate[:, None, None, :], branch)


#################################################################################
#               Embedding Layers for Timesteps and Class Labels                 #
#################################################################################


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (DiT's timm PatchEmbed, no norm): (N, C, H, W) -> (N, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, h, w, D), made contiguous: elementwise ops keep their input's strides, so a permuted view would
        # carry NCHW memory down the residual stream and every LayerNorm and Linear would copy it again.
        return to_nhwc(self.proj(x)).contiguous()


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vectors: sinusoidal frequencies, then a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """t: (N,) timesteps, possibly fractional -> (N, dim) float64: [cos(t f_k), sin(t f_k)], f_k = P^(-k/half).

        Computed in float64 (a few thousand numbers): DiT's float32 arguments t * f_k carry absolute errors up to
        ~6e-5 at t = 999, which would be the largest error of the whole float32 forward pass.
        """
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)  # (half,)
        args = t[:, None].to(torch.float64) * freqs.to(t.device)[None]  # (N, half)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * half)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (N,) -> (N, D)."""
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(t_freq)


class LabelEmbedder(nn.Module):
    """Embeds class labels into vectors; drops labels to the "no class" id (num_classes) for CFG training."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace each label by the "no class" id with probability dropout_prob (or where force_drop_ids == 1)."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """labels: (N,) -> (N, D). Labels are dropped only in training (or when forced)."""
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), on oneDNN GEMMs in eager fp32 CPU work with nothing watching (`kernels.linear_layer`). Both mixers
    use it, so WeightFormer-DiT and the attention DiT run their GEMMs on the same library."""
    if not torch.jit.is_scripting():  # (TorchScript compiles only the plain call)
        return kernels.linear_layer(layer, x)
    return layer(x)


class Mlp(nn.Module):
    """fc2(GELU_tanh(fc1(x))) on channels-last tokens; fc1 is a `DynamicLinear` in dynamic blocks.

    In eager fp32 CPU inference (`kernels.mlp_inference_fusable`) a plain fc1 runs as one oneDNN GEMM with its
    bias and the GELU in the epilogue, and fc2 as another.
    """

    def __init__(self, dim: int, hidden_dim: int, dynamic: bool, predictor: str = "bilateral") -> None:
        super().__init__()
        self.fc1 = DynamicLinear(dim, hidden_dim, predictor=predictor) if dynamic else nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")  # DiT's approximate GELU (the classifier's is exact)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, D) -> (N, h, w, D)."""
        if not torch.jit.is_scripting():  # (TorchScript compiles only the plain path)
            if not kernels.reference_enabled() and kernels.mlp_inference_fusable(self.act, self.fc2, x):
                hidden = kernels.hidden_inference(self.fc1, self.act, x)  # (N, h, w, 4D)
                return kernels.linear_inference(hidden, self.fc2.weight, self.fc2.bias)
            return _linear(self.fc2, self.act(_linear(self.fc1, x)))  # plain linear layers on oneDNN too
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over channels-last tokens (DiT's timm Attention, qkv bias), computed by SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by {num_heads} attention heads.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, D) -> (N, h, w, D)."""
        n, h, w, d = x.shape
        qkv = _linear(self.qkv, x).reshape(n, h * w, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, h*w, D/heads)
        return _linear(self.proj, out.transpose(1, 2).reshape(n, h, w, d))


class DiTBlock(nn.Module):
    """A WeightFormer-DiT block: adaLN-Zero conditioning around a depthwise-conv mixer and an MLP.

        x = LN1(x)
        x = x + gate1 * DWC(modulate(x, shift1, scale1))
        x = x + gate2 * FC2(GELU_tanh(FC1(modulate(LN2(x), shift2, scale2))))

    LN1 normalises the residual stream itself, not a pre-norm branch: that is how the release is written (in
    every block, static or dynamic) and its weights depend on it. Neither LayerNorm has affine parameters.

    mixer="attention" is DiT's own block, the baseline: multi-head self-attention (SDPA) as the mixer, in DiT's
    pre-norm form x = x + gate1 * Attn(modulate(LN1(x), shift1, scale1)). linear_predictor and conv_predictor
    name the dynamic layers' predictors (`weightformer.layers.LINEAR_PREDICTORS`, `CONV_PREDICTORS`).
    """

    def __init__(self, hidden_size: int, mlp_ratio: float = 4.0, dynamic: bool = False, mixer: str = "dwconv",
                 num_heads: int = 1, linear_predictor: str = "bilateral", conv_predictor: str = "adaptive") -> None:
        super().__init__()
        self.dynamic, self.attention = dynamic, mixer == "attention"
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        if self.attention:
            self.token_mixer = Attention(hidden_size, num_heads)
        else:
            mixer_class = partial(DynamicDWConv2d, predictor=conv_predictor) if dynamic else DepthwiseConv
            self.token_mixer = mixer_class(hidden_size, 3)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), dynamic, linear_predictor)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, D), c: conditioning (N, D) -> (N, h, w, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        if self.attention:
            x = gated_residual(x, gate1, self.token_mixer(modulate(self.norm1(x), shift1, scale1)))
            return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))
        x = self.norm1(x)
        x = gated_residual(x, gate1, self.token_mixer(modulate(x, shift1, scale1)))
        return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN-modulated LayerNorm, then a linear map to the patches' pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, D), c: (N, D) -> (N, h, w, p * p * out_channels)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return _linear(self.linear, modulate(self.norm_final(x), shift, scale))


class WeightFormerDiT(nn.Module):
    """WeightFormer-DiT: a DiT whose blocks mix tokens with (dynamic) depthwise convs instead of attention.

    Args:
        input_size: default latent size (int or (H, W)); only a default: any H, W divisible by the patch work.
        patch_size: patch embedding size and stride.
        in_channels: latent channels (4 for Stable Diffusion's VAE).
        hidden_size: token width D.
        depth: number of blocks.
        mlp_ratio: MLP hidden width over D.
        class_dropout_prob: probability of dropping a label to "no class" in training (for CFG).
        num_classes: number of classes; label id num_classes means "no class".
        learn_sigma: also predict the variance (out_channels = 2 * in_channels).
        dynamic_blocks: placement of dynamic blocks, see `dynamic_block_indices` ("sparse" is the release's).
        mixer: "dwconv" (WeightFormer-DiT) or "attention" (DiT itself, the baseline: no dynamic blocks).
        num_heads: attention heads (mixer="attention"); default hidden_size // 64, DiT's head width.
        linear_predictor: predictor of the dynamic MLP layers (`weightformer.layers.LINEAR_PREDICTORS`); the
            release's is "bilateral".
        conv_predictor: predictor of the dynamic depthwise convs (`weightformer.layers.CONV_PREDICTORS`).
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 15,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        dynamic_blocks: str | list[int] = "sparse",
        mixer: str = "dwconv",
        num_heads: int | None = None,
        linear_predictor: str = "bilateral",
        conv_predictor: str = "adaptive",
    ) -> None:
        super().__init__()
        if mixer not in ("dwconv", "attention"):
            raise ValueError(f"mixer must be 'dwconv' or 'attention', got {mixer!r}.")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos position embedding), got {hidden_size}.")
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.dynamic_indices = dynamic_block_indices(depth, "none" if mixer == "attention" else dynamic_blocks)
        heads = num_heads or max(1, hidden_size // 64)
        self.grad_checkpointing = False

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, mlp_ratio, i in self.dynamic_indices, mixer, heads, linear_predictor, conv_predictor)
             for i in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Initialize linear layers (xavier, zero bias), except inside the dynamic layers, which keep their own
        # initialisation (the release's model/wfm.py: truncated normal 0.02 for W0, b, W1, W2 and the predictor's
        # projection).
        dynamic = {id(m) for layer in self.modules() if isinstance(layer, (DynamicLinear, DynamicDWConv2d))
                   for m in layer.modules()}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in dynamic:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        # Initialize the patch embedding like nn.Linear (instead of nn.Conv2d):
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(self.x_embedder.proj.bias)

        # Initialize the label embedding table and the timestep embedding MLP:
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        # Zero-out adaLN modulation layers in the blocks:
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)

        # Zero-out output layers:
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (timm's convention)."""
        self.grad_checkpointing = enable

    @property
    def min_grid(self) -> int:
        """The smallest token grid side the dynamic layers can pool."""
        return max(
            [1] + [m.predictor.min_grid for m in self.modules() if isinstance(m, (DynamicLinear, DynamicDWConv2d))]
        )

    def check_input(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        """Raise a one-line ValueError unless (x, t, y) is a batch this model accepts."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"WeightFormer-DiT expects latents of shape (batch, {self.in_channels}, height, width); "
                             f"got {tuple(x.shape)}.")
        height, width, p = x.shape[2], x.shape[3], self.patch_size
        if height % p or width % p:
            raise ValueError(f"Latent height and width must be multiples of the patch size {p}; got {height}x{width}.")
        if height // p < self.min_grid or width // p < self.min_grid:
            raise ValueError(f"Latent {height}x{width} gives a {height // p}x{width // p} token grid; the dynamic "
                             f"layers need at least {self.min_grid}x{self.min_grid} tokens.")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"t and y must have shape ({x.shape[0]},), one per latent; got {tuple(t.shape)} and "
                             f"{tuple(y.shape)}.")
        # Reads two numbers back from the device; a "meta" batch (MAC counting) has no numbers to read.
        if not torch.compiler.is_compiling() and y.numel() and y.device.type != "meta":
            top = self.y_embedder.embedding_table.num_embeddings - 1  # num_classes is "no class" when trained for CFG
            low, high = int(y.min()), int(y.max())
            if low < 0 or high > top:
                null = ", the last means no class" if top == self.num_classes else ""
                raise ValueError(f"Class ids must lie in 0..{top} (num_classes={self.num_classes}{null}); "
                                 f"got {low}..{high}.")

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, p * p * C) -> (N, C, h * p, w * p)."""
        c, p = self.out_channels, self.patch_size
        n, h, w, _ = x.shape
        x = x.reshape(n, h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict noise (and variance) for noisy latents.

        x: (N, C, H, W) noisy latents; t: (N,) diffusion timesteps; y: (N,) class labels (num_classes: no class).
        Returns (N, out_channels, H, W): the predicted noise, then (learn_sigma) the variance interpolation values.
        """
        self.check_input(x, t, y)
        x = self.x_embedder(x)  # (N, h, w, D)
        x = x + _sincos_2d(self.hidden_size, x.shape[1], x.shape[2], x.device, x.dtype)  # (N, h, w, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (N, D)
        for block in self.blocks:
            x = self._run_block(block, x, c)  # (N, h, w, D)
        x = self.final_layer(x, c)  # (N, h, w, p * p * out_channels)
        return self.unpatchify(x)  # (N, out_channels, H, W)

    def _run_block(self, block: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Only where a graph is recorded: under no_grad (sampling) there is nothing to save, so nothing to recompute.
        # The non-reentrant checkpoint keeps only the block's inputs and replays the RNG state on recomputation.
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, c, use_reentrant=False)
        return block(x, c)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, guided_channels: int = 3
    ) -> torch.Tensor:
        """Forward with classifier-free guidance, the conditional and unconditional halves in one batch.

        x: (2N, C, H, W) whose first half is used for both halves; y: (2N,) labels then "no class" ids.
        eps = uncond + cfg_scale * (cond - uncond) on the first `guided_channels` channels, both halves.
        DiT's release guides only 3 channels (of 4 latent ones) and its FID numbers depend on it, so that is the
        default here too; pass guided_channels=model.in_channels for the standard form.
        """
        half = x[: len(x) // 2]
        model_out = self.forward(torch.cat([half, half], dim=0), t, y)  # (2N, out_channels, H, W)
        eps, rest = model_out[:, :guided_channels], model_out[:, guided_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


#################################################################################
#                   Sine/Cosine Positional Embedding Functions                  #
#################################################################################


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions: (M,) -> (M, dim): [sin(m w_k), cos(m w_k)], w_k = 10000^(-k / (dim / 2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))  # (dim/2,)
    out = positions[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _sincos_2d(dim: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (h, w, dim) embedding for a forward pass: cached in eager mode; under torch.compile built in the graph
    (dynamo would trace through the cache wrapper anyway, and warn that it does)."""
    if torch.compiler.is_compiling():
        return _sincos_2d_cached.__wrapped__(dim, height, width, device, dtype)
    return _sincos_2d_cached(dim, height, width, device, dtype)


@lru_cache(maxsize=16)
def _sincos_2d_cached(dim: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One copy per grid, device and dtype, so a forward pass copies nothing to the device."""
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )  # (h, w) each
    # As in DiT (MAE's helper, whose grid puts w first): the first half of the channels encodes the column.
    emb = torch.cat([_sincos_1d(dim // 2, cols.flatten()), _sincos_1d(dim // 2, rows.flatten())], dim=1)
    return emb.reshape(height, width, dim).to(device=device, dtype=dtype)


def sincos_pos_embed_2d(
    dim: int, height: int, width: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """DiT's fixed 2-D sin-cos position embedding for an h x w token grid: (h, w, dim).

    For a square grid this is DiT's `get_2d_sincos_pos_embed(dim, h)` reshaped to the grid; computed in float64.
    """
    return _sincos_2d_cached(dim, height, width, torch.device(device), dtype).clone()


#################################################################################
#                 Release checkpoints -> our parameter names                    #
#################################################################################


def dit_checkpoint_filter_fn(
    state_dict: dict[str, Any], model: nn.Module | None = None, use_ema: bool = True, origin: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a WeightFormer-DiT release checkpoint (or one of ours) onto `WeightFormerDiT`'s parameter names.

    fast-DiT / DiT training checkpoints hold "model" and "ema" state dicts: "ema" is taken unless `use_ema` is
    False (or it is absent or None). The blocks' dynamic-layer names are translated as for the classifier; the
    other DiT names are ours too. The release's `pos_embed` is a fixed buffer for one square grid: it is checked
    against the sin-cos formula (a CheckpointMismatchError if it differs) and dropped, since we rebuild it for
    the actual grid.
    """
    wrappers = ("ema", "model", "state_dict") if use_ema else ("model", "state_dict")
    for wrapper in wrappers:
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    out = translate_release_keys(state_dict, RELEASE_BLOCK_KEY_RULES)
    pos_embed = out.pop("pos_embed", None)
    if pos_embed is not None:
        _check_release_pos_embed(pos_embed, origin)
    return out


def _check_release_pos_embed(pos_embed: torch.Tensor, origin: str) -> None:
    tokens, dim = pos_embed.shape[-2], pos_embed.shape[-1]
    side = math.isqrt(tokens)
    if side * side != tokens or dim % 4:
        raise CheckpointMismatchError(f"{origin}: pos_embed of shape {tuple(pos_embed.shape)} is not DiT's sin-cos "
                                      "embedding of a square grid.")
    expected = sincos_pos_embed_2d(dim, side, side).reshape(tokens, dim)
    error = (pos_embed.reshape(tokens, dim).double() - expected).abs().max().item()
    if error > 1e-4:
        raise CheckpointMismatchError(f"{origin}: pos_embed differs from DiT's fixed sin-cos embedding by {error:.3g}; "
                                      "a learned position embedding cannot be loaded into WeightFormer-DiT.")


def load_dit_checkpoint(
    model: WeightFormerDiT, source: str | Path | dict[str, Any], use_ema: bool = True, strict: bool = True
) -> WeightFormerDiT:
    """Load a WeightFormer-DiT checkpoint file (the release's, fast-DiT's, ours) or state dict into `model`.

    Raises `CheckpointMismatchError`, in one line naming the file and the keys, for another architecture.
    """
    origin = "the given state dict" if isinstance(source, dict) else str(source)
    state_dict = source if isinstance(source, dict) else read_state_dict(source)
    state_dict = dit_checkpoint_filter_fn(state_dict, model, use_ema=use_ema, origin=origin)
    return load_checkpoint(model, state_dict, strict=strict, origin=origin)


#################################################################################
#                                   DiT Configs                                 #
#################################################################################

# One home for the variants' sizes: the release's S and B at depth 15 (DiT's own S and B have depth 12).
DIT_CONFIGS: dict[str, dict[str, Any]] = {
    f"weightformer_dit_{size}_{patch}": dict(hidden_size=width, depth=15, patch_size=patch)
    for size, width in (("s", 384), ("b", 768))
    for patch in (2, 4, 8)
}


def weightformer_dit_s_2(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_s_2"], **kwargs})


def weightformer_dit_s_4(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_s_4"], **kwargs})


def weightformer_dit_s_8(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_s_8"], **kwargs})


def weightformer_dit_b_2(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_b_2"], **kwargs})


def weightformer_dit_b_4(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_b_4"], **kwargs})


def weightformer_dit_b_8(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_b_8"], **kwargs})


def dit_attn_s_2(**kwargs: Any) -> WeightFormerDiT:
    """The attention baseline: DiT's block (SDPA) at WeightFormer-DiT-S/2's width and depth."""
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_s_2"], "mixer": "attention", **kwargs})


def dit_attn_s_4(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_s_4"], "mixer": "attention", **kwargs})


def dit_attn_b_2(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_b_2"], "mixer": "attention", **kwargs})


def dit_attn_b_4(**kwargs: Any) -> WeightFormerDiT:
    return WeightFormerDiT(**{**DIT_CONFIGS["weightformer_dit_b_4"], "mixer": "attention", **kwargs})


DIT_MODELS = {
    "dit_attn_s_2": dit_attn_s_2,
    "dit_attn_s_4": dit_attn_s_4,
    "dit_attn_b_2": dit_attn_b_2,
    "dit_attn_b_4": dit_attn_b_4,
    "weightformer_dit_s_2": weightformer_dit_s_2,
    "weightformer_dit_s_4": weightformer_dit_s_4,
    "weightformer_dit_s_8": weightformer_dit_s_8,
    "weightformer_dit_b_2": weightformer_dit_b_2,
    "weightformer_dit_b_4": weightformer_dit_b_4,
    "weightformer_dit_b_8": weightformer_dit_b_8,
}
