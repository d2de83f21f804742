"""Counting multiply-accumulates (MACs) with PyTorch's own FlopCounterMode, in fvcore's conventions.

FlopCounterMode counts matrix products and convolutions (2 FLOPs per MAC). To report the same "GMACs" as the
paper (which used fvcore) we halve its FLOPs and add what fvcore also counts: LayerNorm (5 per element when
affine, 4 otherwise) and adaptive average pooling (1 per input element). Scaled dot-product attention on the
CPU is added too, so attention baselines are counted whichever SDPA kernel runs. Elementwise activations and
additions are not counted, as in fvcore. Models are run on the "meta" device: no memory, no compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
import torch.nn as nn
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
    """MACs of one forward pass, in total and per module path (e.g. "blocks.1.mlp.fc1")."""

    total: int
    by_module: dict[str, int] = field(default_factory=dict)

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
    # The layers run their reference path while FlopCounterMode watches (it registers global module hooks,
    # see `kernels.reference_enabled`), the paper's convention (fvcore on the released code): the fast path
    # computes the same function with slightly fewer MACs (its dynamic linear update is summed in the
    # rank-reduced space where that is cheaper), a property of the kernels, not of the model.
    with counter, torch.no_grad():
        meta_model(*(_to_meta(a) for a in args))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {}
    for name, ops in counts.items():
        if name == root or name.startswith(root + "."):
            by_module[name[len(root) + 1 :]] = sum(ops.values()) // 2
    total = sum(counts["Global"].values()) // 2
    return MacCount(total=total, by_module=by_module)


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    return value
