"""Counting multiply-accumulates (MACs) with PyTorch's own FlopCounterMode, in fvcore's conventions.

FlopCounterMode counts matrix products and convolutions (2 FLOPs per MAC). To report the same "GMACs" as the
paper (which used fvcore) we halve its FLOPs and add what fvcore also counts: LayerNorm (5 per element when
affine, 4 otherwise) and adaptive average pooling (1 per input element). Scaled dot-product attention on the
CPU is added too, so attention baselines are counted whichever SDPA kernel runs. Elementwise activations and
additions are not counted, as in fvcore. Models are run on the "meta" device: no memory, no compute.

Attention is also counted on its own (`MacCount.attention`), from the shapes of every
`F.scaled_dot_product_attention` call: softmax(Q K^T / sqrt(d)) V over N query and M key tokens, h heads of
width d (value width e), costs h * N * M * d MACs for Q K^T and h * N * M * e for the product with V, i.e.
2 * N^2 * C per layer for self-attention of width C = h * d (the softmax is elementwise, not counted). Those are
the terms that grow with N^2; PyTorch's counter sees them only for the SDPA kernels it knows (not the CPU one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["MacCount", "count_macs", "count_call_macs"]

aten = torch.ops.aten


def _layer_norm_flops(input_shape, normalized_shape, weight=None, bias=None, *args, out_shape=None, **kwargs):
    return 2 * prod(input_shape) * (5 if weight is not None else 4)


def _adaptive_avg_pool_flops(input_shape, *args, out_shape=None, **kwargs):
    return 2 * prod(input_shape)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_FVCORE_EXTRAS = {
    aten.native_layer_norm: _layer_norm_flops,
    aten._adaptive_avg_pool2d: _adaptive_avg_pool_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
}


@dataclass
class MacCount:
    """MACs of one forward pass, in total and per module path (e.g. "blocks.1.mlp.fc1"); `attention` is the part
    of the total spent in attention's Q K^T and AV products (0 for attention-free models)."""

    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    attention: int = 0

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> MacCount:
    """MACs of `model` on a (batch_size, *input_size) input, counted on a meta-device copy of the model."""
    return count_call_macs(model, torch.empty(batch_size, *input_size, device="meta"))


def count_call_macs(model: nn.Module, *args: Any) -> MacCount:
    """MACs of model(*args) for any arguments (tensors, or lists of them, are moved to the meta device), counted
    on a meta-device copy of the model: for modules whose input is not one image batch (detection heads, ...)."""
    import copy

    meta_model = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False, custom_mapping=_FVCORE_EXTRAS)
    attention = _AttentionMacs()
    # The layers run their reference path while FlopCounterMode watches (it registers global module hooks,
    # see `kernels.reference_enabled`), the paper's convention (fvcore on the released code): the fast path
    # computes the same function with slightly fewer MACs (its dynamic linear update is summed in the
    # rank-reduced space where that is cheaper), a property of the kernels, not of the model.
    with counter, attention, torch.no_grad():
        meta_model(*(_to_meta(a) for a in args))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {}
    for name, ops in counts.items():
        if name == root or name.startswith(root + "."):
            by_module[name[len(root) + 1 :]] = sum(ops.values()) // 2
    total = sum(counts["Global"].values()) // 2
    return MacCount(total=total, by_module=by_module, attention=attention.macs)


class _AttentionMacs(TorchFunctionMode):
    """Adds up the MACs of attention's two products from the shapes of each F.scaled_dot_product_attention call."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query, key, value = (*args, *(kwargs[k] for k in ("query", "key", "value")[len(args):]))[:3]
            # query (..., h, N, d), key (..., h_kv, M, d), value (..., h_kv, M, e); every query head attends
            self.macs += prod(query.shape[:-1]) * key.shape[-2] * (query.shape[-1] + value.shape[-1])
        return func(*args, **kwargs)


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    return value
