"""Fast implementations of WeightFormer's layers, selected automatically; the layers keep the reference twins.

The reference path (the plain PyTorch code in `weightformer.layers` and `weightformer.models`) states the math;
the fast path computes the same function (tests hold it to the reference) with fewer passes over memory:

- 3x3 depthwise convs (static and per-sample dynamic) with bias and the block's residual add fused: a Triton
  kernel on CUDA (`triton_dwconv`), channels-last oneDNN convs with the residual folded into the centre tap
  elsewhere (`dwconv`);
- the dynamic linear layer as one batched GEMM with its bias, and its predicted update summed over the pooled
  tokens in the rank-reduced space, or, on small grids, never formed: the static GEMM plus a correction through
  rank C_r or through the pooled tokens, whichever is cheaper (`dynamic_linear`);
- the MLP's fc2(GELU(h)) keeping only h for the backward pass, GELU recomputed there (`mlp`), only while
  nothing could observe the difference (`gelu_linear_fusable`); in CPU inference, oneDNN GEMMs with fc1's
  bias and GELU and fc2's bias and the block's residual add in their epilogues (`mlp_inference_fusable`), the GELU
  in place after a dynamic fc1 (`hidden_inference`);
- on fp32 CPU tensors, linear layers on oneDNN's GEMMs (`linear`, `matmul`): in inference one GEMM with the bias
  in its epilogue, in training the forward product, the input gradient and the weight gradient, where
  torch.matmul would call MKL; under torch.compile the same as custom ops (`weightformer::onednn_linear`);
- under torch.compile on CPU, convolutions as the custom op `weightformer::conv2d` (`conv2d`): the same oneDNN
  kernels, hidden from inductor's channels-last layout heuristic, which would transpose the (B, H, W, C) tokens.

Not a kernel but the same purpose: `reuse_freed_cpu_memory()` (`allocator`) keeps freed CPU memory in the process
(glibc's malloc), so large activations are not page-faulted in afresh every step; `weightformer bench`, `profile`
and CPU training turn it on. `huge_pages()` says whether malloc's memory gets 2 MiB transparent huge pages (glibc's
tunable `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, set before the process starts), which cut the faults that remain.

Switch to the reference path with `use_reference()` (a context manager, or `use_reference(True)` globally) or
the environment variable WEIGHTFORMER_REFERENCE=1; `weightformer bench` runs both side by side. The reference
path also runs by itself while a tool traces or watches the model (torch.jit.trace, torch.fx, torch.export,
global module hooks such as FlopCounterMode's), see `reference_enabled`; TorchScript compiles only it.
"""

from __future__ import annotations

import os

import torch

try:  # torch.fx.symbolic_trace only (newer torch's is_fx_tracing is also true under torch.export / compile)
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _is_fx_tracing
except ImportError:
    try:
        from torch.fx._symbolic_trace import is_fx_tracing as _is_fx_tracing
    except ImportError:  # no way to tell
        _is_fx_tracing = None

from .allocator import (
    HUGE_PAGES_TUNABLE,
    freed_cpu_memory_reused,
    huge_pages,
    release_freed_cpu_memory,
    reuse_freed_cpu_memory,
    with_huge_pages,
)
from .conv import compiling_for_cpu, conv2d
from .dwconv import depthwise_conv_torch
from .dynamic_linear import (
    apply_dynamic_weight,
    apply_low_rank_dynamic_weight,
    apply_pooled_dynamic_weight,
    dynamic_linear_plan,
    low_rank_bounded_update,
    low_rank_outer_product_sum,
    pooled_bounded_update,
)
from .mlp import _has_hooks as has_hooks
from .mlp import (
    gelu_inference_,
    gelu_linear,
    gelu_linear_fusable,
    global_module_hooks,
    hidden_inference,
    linear,
    linear_add_inference,
    linear_gelu_inference,
    linear_inference,
    matmul,
    mlp_inference_fusable,
    onednn_inference,
    onednn_training,
    plain_linear,
)

__all__ = [
    "use_reference",
    "reference_enabled",
    "reference_enabled_by_tracing",
    "triton_available",
    "depthwise_conv",
    "conv2d",
    "compiling_for_cpu",
    "apply_dynamic_weight",
    "low_rank_outer_product_sum",
    "low_rank_bounded_update",
    "apply_low_rank_dynamic_weight",
    "pooled_bounded_update",
    "apply_pooled_dynamic_weight",
    "dynamic_linear_plan",
    "has_hooks",
    "gelu_linear",
    "gelu_linear_fusable",
    "mlp_inference_fusable",
    "onednn_inference",
    "onednn_training",
    "linear",
    "linear_layer",
    "plain_linear",
    "linear_inference",
    "gelu_inference_",
    "hidden_inference",
    "matmul",
    "linear_gelu_inference",
    "linear_add_inference",
    "reuse_freed_cpu_memory",
    "freed_cpu_memory_reused",
    "release_freed_cpu_memory",
    "huge_pages",
    "with_huge_pages",
    "HUGE_PAGES_TUNABLE",
]


def _reference_from_env(value: str | None) -> bool:
    """WEIGHTFORMER_REFERENCE: unset, empty or "0" selects the fast path, anything else the reference path."""
    return value not in (None, "", "0")


_state = {"reference": _reference_from_env(os.environ.get("WEIGHTFORMER_REFERENCE"))}


def _fx_tracing() -> bool:
    return bool(_is_fx_tracing is not None and _is_fx_tracing())


def reference_enabled() -> bool:
    """True while the layers run their plain PyTorch reference code instead of the fast path.

    That is when asked for (`use_reference`, WEIGHTFORMER_REFERENCE=1) and, always, while a tool observes the
    model op by op: `torch.jit.trace` (fvcore's FlopCountAnalysis traces) and `torch.fx` record the ops they
    see, and global module hooks are how FlopCounterMode and other per-module observers attribute ops to
    modules. The reference path is made of the plain ops (linear, conv, einsum) those tools name and count, in
    the release's order (so MACs come out as the paper's); the fast path's custom autograd function, shape
    juggling and reordered products would be opaque to them or counted differently. (TorchScript scripting
    never reaches this function: the layers test `torch.jit.is_scripting()` first.)
    """
    return _state["reference"] or reference_enabled_by_tracing() or global_module_hooks() or _exporting()


def _exporting() -> bool:
    # torch.export (and the ONNX exporter built on it) traces with symbolic sizes: the reference path's plain
    # ops export as they are, while the fast path's size-dependent choices would become guards on those sizes.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def linear_layer(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for a linear layer; on the fast path, where reading its weight is unobservable (`plain_linear`:
    exactly nn.Linear, no hooks, not parametrized), `linear(x, layer.weight, layer.bias)` instead: oneDNN GEMMs
    on fp32 CPU tensors (inference: one GEMM, the bias in its epilogue; training: the forward product and both
    gradients), F.linear elsewhere. The same function, rounded differently (a float32 ulp or so)."""
    if not reference_enabled() and plain_linear(layer):
        return linear(x, layer.weight, layer.bias)
    return layer(x)


def reference_enabled_by_tracing() -> bool:
    """True while `torch.jit.trace` or `torch.fx` traces the model (the reference path runs then)."""
    return torch.jit.is_tracing() or _fx_tracing()


class use_reference:  # noqa: N801 - used like a function: use_reference(True) or `with use_reference():`
    """Run the reference path: `use_reference(True)` sets it globally, `with use_reference():` for a block.

    As a context manager it restores the previous setting on exit. `use_reference(False)` selects the fast path.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._previous = _state["reference"]
        _state["reference"] = bool(enabled)

    def __enter__(self) -> use_reference:
        return self

    def __exit__(self, *exc: object) -> None:
        _state["reference"] = self._previous


_triton_state: dict[str, object] = {}


def _triton_module():
    """weightformer.kernels.triton_dwconv, or None where triton cannot be imported."""
    if "module" not in _triton_state:
        try:
            from . import triton_dwconv
        except Exception:  # no triton, or a triton that does not match this torch
            triton_dwconv = None
        _triton_state["module"] = triton_dwconv
    return _triton_state["module"]


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (they run on CUDA tensors, or on CPU under TRITON_INTERPRET=1)."""
    return _triton_module() is not None


def depthwise_conv(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None, residual: bool = False
) -> torch.Tensor:
    """Fast depthwise conv (+ bias, + residual x) on channels-last tokens, 'same' zero padding.

    x: (B, H, W, C); kernel: (B, C, k, k) per sample or (C, k, k) shared; bias: (C,) or None -> (B, H, W, C).
    Triton on CUDA for 3x3 kernels, PyTorch (oneDNN channels-last) otherwise.
    """
    if x.is_cuda and kernel.shape[-1] == 3 and triton_available():
        return _triton_module().dwconv3x3(x, kernel, bias, residual)
    return depthwise_conv_torch(x, kernel, bias, residual)
