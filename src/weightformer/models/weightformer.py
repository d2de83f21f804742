"""WeightFormer: an isotropic vision network with global modeling and no attention.

Paper: "Linear-Time Global Visual Modeling without Explicit Attention" (He, Han, Huang, arXiv 2605.01711, 2026).

A plain stack of ConvNeXt-like blocks (depthwise 3x3 token mixing + MLP) on a 16x16-patch token grid. Every
third block is *dynamic*: its depthwise conv and its first MLP layer carry weights W0 + dW(X) predicted from
global statistics of the input (see `weightformer.layers`), which gives every token a global receptive field in
time linear in the number of pixels. No class token, no position embedding: the convolutions give position.

Tokens stay channels-last, (B, H, W, C), from the patch embedding to the head: nn.Linear and LayerNorm act on
the last dimension directly and the 3x3 convolutions see a channels-last (B, C, H, W) view, so no block pays a
layout round trip.
"""

# No `from __future__ import annotations` here: torch.fx copies forward()'s annotations into the code of the
# graphs it traces, and TorchScript cannot read them back as strings.
import re
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._features_fx import register_notrace_module
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..layers import DynamicDWConv2d, DynamicLinear
from ..layers.common import to_nchw, to_nhwc

# The dynamic layers' input checks and per-sample shapes are data-dependent Python: torch.fx feature extraction
# (timm's, torchvision's) keeps them whole, as leaf modules, instead of tracing into them.
register_notrace_module(DynamicLinear)
register_notrace_module(DynamicDWConv2d)
_DYNAMIC_LAYERS = (DynamicLinear, DynamicDWConv2d)

__all__ = [
    "WeightFormer",
    "Block",
    "MODEL_CONFIGS",
    "dynamic_block_indices",
    "checkpoint_filter_fn",
]


#################################################################################
#                                 Building blocks                               #
#################################################################################


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding followed by LayerNorm: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # the release's "init_norm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_nhwc(self.proj(x)))  # (B, H/p, W/p, C)


class DepthwiseConv(nn.Conv2d):
    """Static depthwise 3x3 conv (with bias) on channels-last tokens: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: torch.Tensor, residual: bool = False) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C); with `residual`, x + conv(x) (fused on the fast path)."""
        if not torch.jit.is_scripting():  # (TorchScript compiles only the reference path: nested ifs, see Mlp)
            if not kernels.reference_enabled():
                return kernels.depthwise_conv(x, self.weight.squeeze(1), self.bias, residual=residual)
        y = to_nhwc(self._conv_forward(to_nchw(x), self.weight, self.bias))
        return x + y if residual else y


class Mlp(nn.Module):
    """fc2(GELU(fc1(x))); fc1 is a `DynamicLinear` in dynamic blocks.

    Every submodule's own forward runs, so hooks, LoRA adapters, quantized or pruned layers act as they would in
    any timm model. The one exception is invisible by construction: while training with plain nn.GELU / nn.Linear
    modules and no hooks (`kernels.gelu_linear_fusable`), act and fc2 run fused, storing only fc1's output for
    the backward pass (GELU is recomputed there): the same numbers with a quarter less activation memory.
    """

    def __init__(
        self, dim: int, hidden_dim: int, dynamic: bool, predictor: str, odd_grid_pooling: str = "ceil"
    ) -> None:
        super().__init__()
        if dynamic:
            self.fc1 = DynamicLinear(dim, hidden_dim, predictor=predictor, odd_grid_pooling=odd_grid_pooling)
        else:
            self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        # TorchScript skips the body of `if not torch.jit.is_scripting():` without compiling it, but not the
        # right-hand side of an `and`: the fast path's Python stays in a nested if.
        if not torch.jit.is_scripting():
            if not kernels.reference_enabled():
                # oneDNN GEMMs in fp32 CPU work where fc1 / fc2 are plain nn.Linear (`kernels.linear_layer`)
                hidden = kernels.linear_layer(self.fc1, x)  # (B, H, W, 4C)
                if kernels.gelu_linear_fusable(self.act, self.fc2, hidden):
                    return kernels.gelu_linear(hidden, self.fc2.weight, self.fc2.bias)
                return kernels.linear_layer(self.fc2, self.act(hidden))  # act runs as its module either way
        return self.fc2(self.act(self.fc1(x)))

    @torch.jit.unused
    def forward_fused_inference(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + MLP(x) as oneDNN GEMMs with fused epilogues (CPU inference, `kernels.mlp_inference_fusable`).

        x, residual: (B, H, W, C) -> (B, H, W, C). fc1's bias and GELU run in its GEMM's epilogue where fc1 is a
        plain nn.Linear (a DynamicLinear has a per-sample weight and runs its own forward); fc2's bias and the
        residual add run in fc2's.
        """
        hidden = kernels.hidden_inference(self.fc1, self.act, x)  # (B, H, W, 4C)
        return kernels.linear_add_inference(hidden, self.fc2.weight, self.fc2.bias, residual)


class Block(nn.Module):
    """A WeightFormer block, static or dynamic.

    static:   x = x + DWConv(x);                       x = x + DropPath(MLP(LN2(x)))
    dynamic:  x = LN1(x); x = x + DynDWConv(x);        x = x + DropPath(DynMLP(LN2(x)))

    In dynamic blocks LN1 normalises the residual stream itself rather than a pre-norm branch. That is how the
    reference implementation is written and the released weights depend on it, so we keep it. The token mixer
    has no drop-path in either kind of block, also as released.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        dynamic: bool = False,
        drop_path: float = 0.0,
        linear_predictor: str = "bilateral",
        conv_predictor: str = "adaptive",
        odd_grid_pooling: str = "ceil",
    ) -> None:
        super().__init__()
        self.dynamic = dynamic
        self.norm1 = nn.LayerNorm(dim, eps=1e-6) if dynamic else nn.Identity()
        self.token_mixer = DynamicDWConv2d(dim, 3, predictor=conv_predictor) if dynamic else DepthwiseConv(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dynamic, linear_predictor, odd_grid_pooling)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        x = self.norm1(x)
        x = self.token_mixer(x, residual=True)  # x + mixer(x), the add fused into the conv on the fast path
        if not torch.jit.is_scripting():  # (TorchScript compiles only the reference path: nested ifs, see Mlp)
            if not kernels.reference_enabled() and self._mlp_fusable(x):
                return self.mlp.forward_fused_inference(self.norm2(x), residual=x)  # x + MLP(LN2(x)), one pass less
        return x + self.drop_path(self.mlp(self.norm2(x)))

    @torch.jit.unused
    def _mlp_fusable(self, x: torch.Tensor) -> bool:
        # CPU inference with nothing watching the MLP or the drop-path (an identity outside training).
        return (
            kernels.mlp_inference_fusable(self.mlp.act, self.mlp.fc2, x)
            and (isinstance(self.drop_path, nn.Identity) or not self.training)
            and not kernels.has_hooks(self.mlp)
            and not kernels.has_hooks(self.drop_path)
        )


def dynamic_block_indices(depth: int, placement: str | Iterable[int] = "sparse") -> tuple[int, ...]:
    """Which blocks are dynamic.

    "sparse" (the release): block i iff (i + 2) % 3 == 0, i.e. 1, 4, 7, ... (6 of 17). The paper found this
    sparse insertion better than denser insertion in both accuracy and speed. "none": a fully static network.
    "all": every block. Or an explicit iterable of block indices.
    """
    if isinstance(placement, str):
        if placement == "sparse":
            return tuple(i for i in range(depth) if (i + 2) % 3 == 0)
        if placement == "none":
            return ()
        if placement == "all":
            return tuple(range(depth))
        raise ValueError(f"dynamic_blocks must be 'sparse', 'none', 'all' or a list of indices, got {placement!r}.")
    indices = tuple(sorted({int(i) for i in placement}))
    if indices and (indices[0] < 0 or indices[-1] >= depth):
        raise ValueError(f"dynamic block indices {indices} out of range for depth {depth}.")
    return indices


#################################################################################
#                                   WeightFormer                                #
#################################################################################


class WeightFormer(nn.Module):
    """WeightFormer image classifier.

    Args:
        img_size: default input size (H, W) or one int; any multiple of the patch size works at run time.
        patch_size: patch embedding size and stride.
        in_chans: input image channels.
        num_classes: classifier outputs; 0 for no head.
        global_pool: "avg" (mean over tokens) or "" (no pooling, forward_head returns the token grid).
        embed_dim: token width C.
        depth: number of blocks.
        mlp_ratio: MLP hidden width over C.
        dynamic_blocks: placement of dynamic blocks, see `dynamic_block_indices`.
        linear_predictor: predictor of the dynamic MLP layers (see `weightformer.layers.LINEAR_PREDICTORS`).
        conv_predictor: predictor of the dynamic depthwise convs (see `weightformer.layers.CONV_PREDICTORS`).
        odd_grid_pooling: how the dynamic linear layers pool odd token grids: "ceil" (default, every token
            counts) or "floor" (the reference code's, which drops the last row/column; the released weights
            give the reference code's outputs exactly on odd grids with it). Even grids are the same either way.
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth rate, increasing linearly over the blocks.
        device, dtype: where and in which dtype to create the parameters (timm's factory passes them).
    """

    # forward_features returns tokens channels-last, (B, h, w, C); timm's tools read this attribute.
    output_fmt = "NHWC"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 384,
        depth: int = 17,
        mlp_ratio: float = 4.0,
        dynamic_blocks: str | Iterable[int] = "sparse",
        linear_predictor: str = "bilateral",
        conv_predictor: str = "adaptive",
        odd_grid_pooling: str = "ceil",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}.")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.dynamic_indices = dynamic_block_indices(depth, dynamic_blocks)
        self.grad_checkpointing = False
        with torch.device(device) if device is not None else nullcontext():
            self._build(depth, mlp_ratio, linear_predictor, conv_predictor, odd_grid_pooling, drop_rate, drop_path_rate)
        if dtype is not None:
            self.to(dtype)
        # The smallest token grid side the dynamic layers can pool (a plain int: TorchScript reads it).
        self.min_grid = max([1] + [m.min_grid for m in self.modules() if isinstance(m, _DYNAMIC_LAYERS)])

    def _build(
        self,
        depth: int,
        mlp_ratio: float,
        linear_predictor: str,
        conv_predictor: str,
        odd_grid_pooling: str,
        drop_rate: float,
        drop_path_rate: float,
    ) -> None:
        embed_dim, patch_size = self.embed_dim, self.patch_size
        self.patch_embed = PatchEmbed(patch_size, self.in_chans, embed_dim)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # plain floats: meta-device safe
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    mlp_ratio,
                    dynamic=i in self.dynamic_indices,
                    drop_path=rates[i],
                    linear_predictor=linear_predictor,
                    conv_predictor=conv_predictor,
                    odd_grid_pooling=odd_grid_pooling,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # nn.Linear (including the dynamic-linear predictors' projections): truncated normal, zero bias.
        # LayerNorm: 1 / 0. Conv2d (patch embedding, depthwise and 1x1 kernel-predictor convs): PyTorch default.
        # The dynamic layers initialise their own static weights (truncated normal, std 0.02, bias included).
        def init(module: nn.Module) -> None:
            if type(module) is nn.Linear:  # not DynamicLinear, an nn.Linear that initialises itself
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(init)
        for module in self.modules():  # predictors whose initialisation is part of their definition (agent)
            if getattr(module, "initialises_itself", False):
                module.reset_parameters()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError with a plain explanation unless `x` is an image batch this model accepts."""
        if x.ndim != 4:
            raise ValueError(
                f"WeightFormer expects a batch of images of shape (batch, channels, height, width); "
                f"got a {x.ndim}-D tensor of shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"WeightFormer was built for {self.in_chans}-channel images but the input has {x.shape[1]} "
                f"channels (shape {tuple(x.shape)}, expected (batch, {self.in_chans}, height, width))."
            )
        height, width = x.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"Image height and width must be multiples of the patch size {p}; got {height}x{width}. "
                f"Resize or crop to e.g. {max(p, height // p * p)}x{max(p, width // p * p)}."
            )
        grid = self.min_grid
        if height // p < grid or width // p < grid:
            raise ValueError(
                f"Image {height}x{width} gives a {height // p}x{width // p} token grid, too small for the "
                f"dynamic layers' pooling, which need at least {grid}x{grid} tokens "
                f"({grid * p}x{grid * p} pixels)."
            )

    # -- timm model interface -------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # No named exceptions: 1-D parameters (norms, biases) are excluded from decay by the optimizer factory.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (timm's convention)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}.")
            self.global_pool = global_pool
        self.num_classes = num_classes
        reference = self.patch_embed.norm.weight  # the new head follows the model's device and dtype
        self.head = (
            nn.Linear(self.embed_dim, num_classes, device=reference.device, dtype=reference.dtype)
            if num_classes > 0
            else nn.Identity()
        ).train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the outputs of chosen blocks.

        Args:
            x: images (B, 3, H, W).
            indices: the last n blocks if an int, all if None, else these block indices.
            norm: apply the final LayerNorm to each intermediate.
            stop_early: stop after the last requested block (only with intermediates_only).
            output_fmt: "NCHW" (B, C, h, w), "NHWC" (B, h, w, C) or "NLC" (B, h*w, C).
            intermediates_only: return only the intermediates.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self._check(x)
        x = self.patch_embed(x)  # (B, h, w, C)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if output_fmt == "NCHW":
                    y = y.permute(0, 3, 1, 2).contiguous()
                elif output_fmt == "NLC":
                    y = y.flatten(1, 2)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks (and optionally norm and head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # -- forward --------------------------------------------------------------------------------------------

    def _check(self, x: torch.Tensor) -> None:
        # Plain Python checks with readable messages in eager mode. Tracers (torch.fx, torch.jit.trace) and
        # TorchScript skip them: under tracing the sizes are symbolic, and a bad size still fails in the ops.
        if not torch.jit.is_scripting():
            if not kernels.reference_enabled_by_tracing():
                self.check_input(x)

    @torch.jit.ignore
    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # Only where a graph is recorded (under no_grad there is nothing to save). The non-reentrant checkpoint
        # keeps the block's input alone and restores the RNG state before recomputing, so drop-path draws the
        # same masks twice.
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> normalised tokens (B, H/p, W/p, C)."""
        self._check(x)
        x = self.patch_embed(x)  # (B, h, w, C)
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and torch.is_grad_enabled():
                for block in self.blocks:
                    x = checkpoint(block, x, use_reentrant=False)
                return self.norm(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """x: (B, h, w, C) -> logits (B, num_classes), or pooled features (B, C) with pre_logits."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


#################################################################################
#                       Release checkpoints -> our parameter names              #
#################################################################################

# The release's names (its model/wfm.py; README "Released checkpoints") on the left, ours on the right;
# applied in order, first match wins.
# The block rules are shared with WeightFormer-DiT, whose release names its blocks' layers the same way.
RELEASE_BLOCK_KEY_RULES = [
    (r"^blocks\.(\d+)\.dwc\.w$", r"blocks.\1.token_mixer.static_weight"),
    (r"^blocks\.(\d+)\.dwc\.b$", r"blocks.\1.token_mixer.bias"),
    (r"^blocks\.(\d+)\.dwc\.wfm\.0\.", r"blocks.\1.token_mixer.predictor.fc1."),
    (r"^blocks\.(\d+)\.dwc\.wfm\.2\.", r"blocks.\1.token_mixer.predictor.fc2."),
    (r"^blocks\.(\d+)\.dwc\.", r"blocks.\1.token_mixer."),
    (r"^blocks\.(\d+)\.linear1\.w$", r"blocks.\1.mlp.fc1.weight"),
    (r"^blocks\.(\d+)\.linear1\.b$", r"blocks.\1.mlp.fc1.bias"),
    (r"^blocks\.(\d+)\.linear1\.wfm\.", r"blocks.\1.mlp.fc1.predictor.proj."),
    (r"^blocks\.(\d+)\.linear1\.w1$", r"blocks.\1.mlp.fc1.predictor.input_basis"),
    (r"^blocks\.(\d+)\.linear1\.w2$", r"blocks.\1.mlp.fc1.predictor.output_basis"),
    (r"^blocks\.(\d+)\.linear1\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.linear2\.", r"blocks.\1.mlp.fc2."),
    # Ours before DynamicLinear became an nn.Linear: its W0 was called static_weight.
    (r"^blocks\.(\d+)\.mlp\.fc1\.static_weight$", r"blocks.\1.mlp.fc1.weight"),
]
_RELEASE_KEY_RULES = [(r"^init_norm\.", "patch_embed.norm."), *RELEASE_BLOCK_KEY_RULES]


def translate_release_keys(
    state_dict: dict[str, Any], rules: list[tuple[str, str]] = _RELEASE_KEY_RULES
) -> dict[str, torch.Tensor]:
    """Rename the release's keys by `rules` (first match wins) and strip a DDP "module." prefix.

    The dynamic linear layers' input-major W0 (C x 4C, `linear1.w`) is transposed to nn.Linear's (4C x C)
    layout. Keys no rule matches (ours among them) pass through unchanged.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for pattern, replacement in rules:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                if key.endswith("linear1.w"):
                    value = value.t()  # release: x @ W0 with W0 (C, 4C); ours: (4C, C) like nn.Linear
                key = new_key
                break
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map a released WeightFormer checkpoint (or one of ours) onto this module's parameter names.

    Accepts a raw state dict or a training checkpoint holding it under "model" / "state_dict", strips a
    DistributedDataParallel "module." prefix, renames the release's keys (README "Released checkpoints") and
    transposes the dynamic linear layers' input-major W0 (C x 4C) to nn.Linear's (4C x C) layout. Our own state
    dicts pass through.
    """
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    return translate_release_keys(state_dict)


#################################################################################
#                              Configs and registration                         #
#################################################################################

# One home for the variants' sizes. B is the S network evaluated (and trained) at 448x448.
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "weightformer_tiny": dict(embed_dim=192, depth=17, img_size=224),
    "weightformer_small": dict(embed_dim=384, depth=17, img_size=224),
    "weightformer_base": dict(embed_dim=384, depth=17, img_size=448),
}
# The same networks with the "normalized" dynamic linear predictor in every dynamic block (the release's sparse
# placement and dynamic convs unchanged): the release's outer-product update read out with a focused feature
# map and a normaliser per token, linear in N. It solves random-position same_different on every seed where the
# release's predictor stays at chance (benchmarks/PROBES.md, "Round two"). No weights are published for them.
NORMALIZED_CONFIGS: dict[str, dict[str, Any]] = {
    f"{name}_normalized": dict(config, linear_predictor="normalized") for name, config in RELEASED_CONFIGS.items()
}
MODEL_CONFIGS: dict[str, dict[str, Any]] = {**RELEASED_CONFIGS, **NORMALIZED_CONFIGS}


def _cfg(hf_hub_id: str | None, size: int) -> dict[str, Any]:
    return dict(
        hf_hub_id=hf_hub_id,
        num_classes=1000,
        input_size=(3, size, size),
        pool_size=(size // 16, size // 16),  # the token grid forward_features returns
        # The release's evaluation (its data/build.py): resize to a *square* floor(size * 256 / 224) on both
        # sides, aspect ratio not kept (timm's "squash"), then centre crop `size`, bicubic.
        crop_pct=224 / 256,
        crop_mode="squash",
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj",
        classifier="head",
        paper_ids="arXiv:2605.01711",
        paper_name="Linear-Time Global Visual Modeling without Explicit Attention",
        license="apache-2.0",
    )


default_cfgs = generate_default_cfgs(
    {
        "weightformer_tiny.in1k": _cfg("RuizeHe/weightformer-t", 224),
        "weightformer_small.in1k": _cfg("RuizeHe/weightformer-s", 224),
        "weightformer_base.in1k": _cfg("RuizeHe/weightformer-b", 448),
        # timm's tag for a configuration without weights.
        **{f"{name}.untrained": _cfg(None, config["img_size"]) for name, config in NORMALIZED_CONFIGS.items()},
    }
)


def _create_weightformer(variant: str, pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    if pretrained and variant not in RELEASED_CONFIGS:
        raise ValueError(f"No pretrained weights exist for {variant}: weights are published for "
                         f"{', '.join(sorted(RELEASED_CONFIGS))} only. Use pretrained=False, or a checkpoint.")
    out_indices = kwargs.pop("out_indices", 3)
    model_args = {**MODEL_CONFIGS[variant], **kwargs}
    return build_model_with_cfg(
        WeightFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **model_args,
    )


@register_model
def weightformer_tiny(pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    """WeightFormer-T: width 192, depth 17, 224x224."""
    return _create_weightformer("weightformer_tiny", pretrained, **kwargs)


@register_model
def weightformer_small(pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    """WeightFormer-S: width 384, depth 17, 224x224."""
    return _create_weightformer("weightformer_small", pretrained, **kwargs)


@register_model
def weightformer_base(pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    """WeightFormer-B: the S network at 448x448."""
    return _create_weightformer("weightformer_base", pretrained, **kwargs)


@register_model
def weightformer_tiny_normalized(pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    """WeightFormer-T with the "normalized" dynamic linear predictor (no published weights)."""
    return _create_weightformer("weightformer_tiny_normalized", pretrained, **kwargs)


@register_model
def weightformer_small_normalized(pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    """WeightFormer-S with the "normalized" dynamic linear predictor (no published weights)."""
    return _create_weightformer("weightformer_small_normalized", pretrained, **kwargs)


@register_model
def weightformer_base_normalized(pretrained: bool = False, **kwargs: Any) -> WeightFormer:
    """WeightFormer-B (S at 448x448) with the "normalized" dynamic linear predictor (no published weights)."""
    return _create_weightformer("weightformer_base_normalized", pretrained, **kwargs)
