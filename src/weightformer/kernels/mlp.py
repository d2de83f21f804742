"""The MLP on the fast path: in training fc2(GELU(h)) storing only h; in CPU inference GEMMs with fused epilogues.

Autograd keeps two (tokens x 4C) activations per MLP for the reference `fc2(act(h))`: h, for GELU's derivative,
and GELU(h), fc2's input for its weight gradient. GELU is cheap to recompute, so this function saves h alone and
recomputes GELU(h) in the backward pass: a quarter less activation memory per block at the cost of one extra
elementwise pass. The forward computes the reference's ops, so outputs and gradients are the same (on fp32 CPU
tensors up to rounding: the products run on oneDNN there, see below).

The fused function reads fc2's weight instead of calling fc2 and never calls the activation module, so it is
only used where that is unobservable: `gelu_linear_fusable` says when (plain nn.GELU and nn.Linear modules,
no hooks, no parametrizations, gradients being recorded). Anything else, a LoRA-wrapped or quantized fc2, a
pruning mask, a forward hook, a FLOP counter, gets the modules' own forwards.

Inference on CPU in fp32 (`mlp_inference_fusable`): the static MLP runs as two oneDNN GEMMs whose epilogues
apply fc1's bias and GELU and fc2's bias and the block's residual add while each output tile is still in cache
(`torch.ops.mkldnn._linear_pointwise`, the kernels torch.compile's CPU backend uses for the same fusions). The
unfused ops read and write the (tokens x 4C) hidden map twice more and the residual stream once more. Measured
on CPU (1 thread, CPU time, 3136 tokens, fp32): 12.6 vs 23.7 ms per MLP at width 192, 35.8 vs 86.0 ms at 384;
the outputs agree to fp32 rounding (relative 1e-6). Dynamic blocks fuse fc2 and the residual only (their fc1's
weight differs per sample).

Training on CPU in fp32 (`linear`, `onednn_training`): all three products of a linear layer run on oneDNN, the
forward product x W^T and the input gradient grad W as its GEMMs, the weight gradient grad^T x (with the bias
gradient) as its inner-product backward (`_onednn_weight_grad`). On the idle AMD EPYC of benchmarks/RESULTS.md
(`python benchmarks/gemm_libraries.py`, one thread, the classifier's MLP shapes at 224²) torch.matmul (MKL) runs
all three at 50-53 GMAC/s, oneDNN at 108-120 (forward, input gradient) and 89-102 (weight gradient). Same
function, different rounding (relative ~1e-6).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module
from torch.nn.utils import parametrize

from .conv import compiling_for_cpu

__all__ = [
    "gelu_linear",
    "gelu_linear_fusable",
    "global_module_hooks",
    "linear",
    "onednn_training",
    "mlp_inference_fusable",
    "onednn_inference",
    "plain_linear",
    "linear_gelu_inference",
    "linear_add_inference",
]


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def global_module_hooks() -> bool:
    """Whether hooks are registered for every module (`torch.nn.modules.module.register_module_forward_hook`
    and friends), as FlopCounterMode's module tracker and other per-module observers do."""
    return bool(
        _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


def gelu_linear_fusable(act: nn.Module, fc2: nn.Module, hidden: torch.Tensor) -> bool:
    """Whether fc2(act(hidden)) may run as `gelu_linear(hidden, fc2.weight, fc2.bias)` with nothing observable lost.

    True only for exactly nn.GELU (exact, not tanh) and exactly nn.Linear (not a subclass, a LoRA wrapper or a
    quantized module), neither with hooks of their own or global module hooks, fc2 not parametrized (e.g. by
    `torch.nn.utils.parametrize` or weight norm) and gradients being recorded (the fusion only saves memory
    for the backward pass).
    """
    return (
        type(act) is nn.GELU
        and act.approximate == "none"
        and type(fc2) is nn.Linear
        and not parametrize.is_parametrized(fc2)
        and not _has_hooks(act)
        and not _has_hooks(fc2)
        and not global_module_hooks()
        and torch.is_grad_enabled()
        and (hidden.requires_grad or fc2.weight.requires_grad)
    )


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # Under autocast F.linear casts its operands (to bf16, say); the backward repeats those casts by hand.
        # oneDNN GEMMs where `_onednn_products` holds (fp32 CPU, eager), as `linear`'s.
        ctx.onednn = _onednn_products(hidden, weight)
        activated = F.gelu(hidden)
        out = _onednn_gemm(activated, weight, bias) if ctx.onednn else F.linear(activated, weight, bias)
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        compute = grad_out.dtype  # the dtype the forward's matmul ran in
        activated = F.gelu(hidden)  # recomputed: the activation that was not stored
        flat_grad = grad_out.flatten(0, -2)  # (N, D)
        if ctx.onednn and not torch.is_grad_enabled():  # (create_graph=True: differentiable ops below)
            grad_weight, grad_bias = _onednn_weight_grad(flat_grad, activated.flatten(0, -2), weight, ctx.has_bias)
            grad_activated = _onednn_gemm(grad_out, weight.t(), None)
        else:
            grad_weight = flat_grad.t() @ activated.flatten(0, -2).to(compute)  # (D, K)
            grad_bias = flat_grad.sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
            grad_activated = (grad_out @ weight.to(compute)).to(hidden.dtype)  # (..., K)
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated, hidden)  # what autograd's GELU node runs
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias


# Once, at import: torch.compile's tracer would not step into torch.backends.mkldnn.is_available (a graph break).
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_products(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x W^T may be a oneDNN GEMM as far as the operands go: fp32 CPU tensors, outside autocast, eager mode
    (under torch.compile `onednn_compiled` decides), no functorch transform (torch.func) active."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
        and _ONEDNN_LINEAR
    )


def gelu_linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(F.gelu(hidden), weight, bias), keeping only `hidden` for the backward pass.

    hidden: (..., K), weight: (D, K), bias: (D,) or None -> (..., D). Without gradients there is nothing to
    save and the plain expression runs.
    """
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return F.linear(F.gelu(hidden), weight, bias)
    if onednn_compiled(hidden, weight):  # the same, as a custom op inductor calls (the GEMMs on oneDNN)
        return torch.ops.weightformer.onednn_gelu_linear(hidden, weight, bias)
    return _GeluLinear.apply(hidden, weight, bias)


def onednn_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x W^T may run as a oneDNN GEMM (`torch.ops.mkldnn._linear_pointwise`, no autograd): no gradients
    recorded and the operands fit (`_onednn_products`: fp32 CPU, no autocast, eager, no torch.func transform)."""
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) and _onednn_products(x, weight)


def onednn_training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x W^T may run as oneDNN GEMMs with a backward (`linear`): gradients being recorded and the operands
    fit (`_onednn_products`: fp32 CPU, no autocast, eager, no torch.func transform)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) and _onednn_products(x, weight)


def _onednn_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "none")


def _onednn_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, with_bias: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear layer's weight gradient grad^T x, and its bias gradient grad.sum(0) if with_bias, as oneDNN's
    inner-product backward (the op torch's own mkldnn linear uses). grad: (N, D), x: (N, C), weight: (D, C) ->
    (D, C), (D,) or None. The op reads grad and x as oneDNN tensors (one copy each) and returns dense tensors for
    a dense weight, whose values it does not read."""
    grad_weight, grad_bias = torch.ops.aten.mkldnn_linear_backward_weights(
        grad.contiguous().to_mkldnn(), x.contiguous().to_mkldnn(), weight, with_bias
    )
    return grad_weight, (grad_bias if with_bias else None)


class _OneDNNLinear(torch.autograd.Function):
    """F.linear with its forward product, its input gradient and its weight (and bias) gradient on oneDNN (see the
    module docstring). Under create_graph the backward runs differentiable torch ops instead, so double backward
    works as F.linear's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_gemm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        if not torch.is_grad_enabled():
            return _onednn_linear_grads(grad_out, x, weight, *wanted)
        # create_graph=True: differentiable torch ops
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (N, D)
        grad_x = grad_out @ weight if wanted[0] else None
        grad_weight = flat_grad.t() @ x.reshape(-1, x.shape[-1]) if wanted[1] else None  # (D, C)
        grad_bias = flat_grad.sum(0) if wanted[2] else None
        return grad_x, grad_weight, grad_bias


def _onednn_linear_grads(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, input_grad: bool, weight_grad: bool, bias_grad: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The gradients of F.linear(x, weight, bias) that are asked for, on oneDNN, None for the others: grad_x as a
    GEMM, grad_weight (and grad_bias, from the same call) as the inner-product backward."""
    flat_grad = grad.reshape(-1, grad.shape[-1])  # (N, D)
    # (N, D) x (D, C): oneDNN reads W^T as a linear layer's (C, D) weight, copied contiguous (small)
    grad_x = _onednn_gemm(grad, weight.t(), None) if input_grad else None
    grad_weight = grad_bias = None
    if weight_grad:
        grad_weight, grad_bias = _onednn_weight_grad(flat_grad, x.reshape(-1, x.shape[-1]), weight, bias_grad)
    elif bias_grad:
        grad_bias = flat_grad.sum(0)
    return grad_x, grad_weight, grad_bias


# Under torch.compile the same oneDNN products run as custom ops, opaque to inductor (it calls them as extern
# kernels, as it calls MKL's for F.linear) and fused with nothing: the elementwise work around them is inductor's.
@torch.library.custom_op(
    "weightformer::onednn_linear", mutates_args=(), device_types="cpu",
    schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
)
def _onednn_linear_op(x, weight, bias):
    return _onednn_gemm(x, weight, bias)


@_onednn_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op(
    "weightformer::onednn_linear_backward", mutates_args=(), device_types="cpu",
    schema="(Tensor grad, Tensor x, Tensor weight, bool input_grad, bool weight_grad, bool bias_grad) "
    "-> (Tensor, Tensor, Tensor)",
)
def _onednn_linear_backward_op(grad, x, weight, input_grad, weight_grad, bias_grad):
    """(grad_x, grad_weight, grad_bias), each empty where not asked for (a custom op returns no None)."""
    grads = _onednn_linear_grads(grad, x, weight, input_grad, weight_grad, bias_grad)
    return tuple(grad.new_empty(0) if g is None else g for g in grads)


@_onednn_linear_backward_op.register_fake
def _(grad, x, weight, input_grad, weight_grad, bias_grad):
    empty = grad.new_empty(0)
    return (x.new_empty(x.shape) if input_grad else empty, weight.new_empty(weight.shape) if weight_grad else empty,
            grad.new_empty(grad.shape[-1]) if bias_grad else empty)


def _onednn_linear_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _wanted_grads(ctx) -> tuple[bool, bool, bool]:
    """Which of (input, weight, bias) gradients a linear custom op's backward must compute."""
    return ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]


def _onednn_linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    wanted = _wanted_grads(ctx)
    grads = torch.ops.weightformer.onednn_linear_backward(grad, x, weight, *wanted)
    return tuple(g if want else None for g, want in zip(grads, wanted, strict=True))


_onednn_linear_op.register_autograd(_onednn_linear_backward, setup_context=_onednn_linear_setup)


# fc2(GELU(h)) under torch.compile: one custom op that keeps h alone for the backward pass, as `_GeluLinear` does in
# eager mode. Written as GELU followed by weightformer::onednn_linear, inductor's partitioner would keep GELU(h) as
# well: the linear backward op reads it, and a tensor an opaque op reads in the backward pass is never recomputed
# (a quarter more activation memory per MLP; compiled WeightFormer-T training kept 571 MiB against eager's 412).
# The op's GELU is inside it, out of the partitioner's sight; its backward recomputes GELU(h) from h as graph ops.
@torch.library.custom_op(
    "weightformer::onednn_gelu_linear", mutates_args=(), device_types="cpu",
    schema="(Tensor hidden, Tensor weight, Tensor? bias) -> Tensor",
)
def _onednn_gelu_linear_op(hidden, weight, bias):
    return _onednn_gemm(F.gelu(hidden), weight, bias)


@_onednn_gelu_linear_op.register_fake
def _(hidden, weight, bias):
    return hidden.new_empty((*hidden.shape[:-1], weight.shape[0]))


def _onednn_gelu_linear_backward(ctx, grad):
    """GELU(h) recomputed, the linear layer's gradients on oneDNN, then GELU's: under torch.compile the GELU and its
    derivative here are the backward graph's own (inductor's) kernels, reading the saved h."""
    hidden, weight = ctx.saved_tensors
    wanted = _wanted_grads(ctx)
    grad_act, grad_weight, grad_bias = torch.ops.weightformer.onednn_linear_backward(
        grad, F.gelu(hidden), weight, *wanted)
    grad_hidden = torch.ops.aten.gelu_backward(grad_act, hidden) if wanted[0] else None
    return grad_hidden, grad_weight if wanted[1] else None, grad_bias if wanted[2] else None


# the forward's inputs are what both ops save: (hidden, weight), and whether there is a bias
_onednn_gelu_linear_op.register_autograd(_onednn_gelu_linear_backward, setup_context=_onednn_linear_setup)


def onednn_compiled(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x W^T is being compiled (torch.compile) for fp32 CPU tensors outside autocast: then it runs as the
    custom op weightformer::onednn_linear (oneDNN's GEMMs, its backward too) instead of F.linear (MKL)."""
    return compiling_for_cpu(x) and x.dtype == torch.float32 and weight.dtype == torch.float32 and _ONEDNN_LINEAR


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN's GEMMs where that is unobservable up to float rounding.

    x: (..., C), weight: (D, C), bias: (D,) or None -> (..., D). CPU fp32 inference: `linear_inference`;
    training (`onednn_training`): the forward product, the input gradient and the weight and bias gradients on
    oneDNN; under torch.compile (`onednn_compiled`) the custom op weightformer::onednn_linear, the same products.
    Anything else (CUDA, autocast, float64): F.linear. On the AMD EPYC of
    benchmarks/RESULTS.md, one thread, oneDNN runs the classifier's (3136 x 384) x (384 x 1536) products
    1.9-2.3x faster than torch.matmul (MKL) does (`benchmarks/gemm_libraries.py`).
    """
    if onednn_inference(x, weight):
        return linear_inference(x, weight, bias)
    if onednn_training(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    if onednn_compiled(x, weight):
        return torch.ops.weightformer.onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def mlp_inference_fusable(act: nn.Module, fc2: nn.Module, x: torch.Tensor) -> bool:
    """Whether act and fc2 (and the residual add after them) may run as oneDNN GEMMs with fused epilogues.

    Only where nothing could tell: no gradients recorded (the fused kernels have no backward), fp32 CPU tensors
    outside autocast, eager mode (torch.compile fuses by itself), plain nn.GELU (exact or tanh) / nn.Linear
    without hooks or parametrizations (see `gelu_linear_fusable`).
    """
    return (
        type(act) is nn.GELU
        and act.approximate in ("none", "tanh")
        and not _has_hooks(act)
        and plain_linear(fc2)
        and onednn_inference(x, fc2.weight)
    )


def plain_linear(module: nn.Module) -> bool:
    """Exactly nn.Linear, not parametrized, no hooks of its own or global ones: reading its weight is unobservable."""
    return (
        type(module) is nn.Linear
        and not parametrize.is_parametrized(module)
        and not _has_hooks(module)
        and not global_module_hooks()
    )


def gelu_inference_(hidden: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU of a temporary activation, in place (no autograd): no second (..., 4C) buffer to allocate and fault in,
    ~20 % less time than out of place for DiT's tanh GELU on a 16 x 256 x 1536 map. Returns `hidden`."""
    return torch.ops.aten.gelu_(hidden, approximate=approximate)


def linear_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b as one oneDNN GEMM, bias in its epilogue (no autograd; see `onednn_inference`).
    x: (..., C), weight: (D, C) -> (..., D)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for a: (..., K) and a 2-D b: (K, M); on oneDNN GEMMs (b read as a linear layer's weight b^T) where
    `linear` would use them, in inference and in training, eager or compiled, else torch.matmul. On the AMD EPYC of
    benchmarks/PROFILE.md oneDNN runs the dynamic linear layer's rank-C/4 products about 2x faster than MKL."""
    if b.ndim == 2 and (_onednn_products(a, b) or onednn_compiled(a, b)):  # `linear` picks eager or compiled form
        return linear(a, b.t(), None)
    return a @ b


def linear_gelu_inference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none"
) -> torch.Tensor:
    """GELU(x W^T + b), bias and GELU in the GEMM's epilogue (no autograd). x: (..., C), weight: (D, C) -> (..., D).
    approximate: "none" (erf, the classifier's) or "tanh" (DiT's), as nn.GELU's."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)


def hidden_inference(fc1: nn.Module, act: nn.GELU, x: torch.Tensor) -> torch.Tensor:
    """act(fc1(x)) in CPU inference (`mlp_inference_fusable`): one oneDNN GEMM with bias and GELU in its epilogue
    where fc1 is a plain nn.Linear; else fc1's own forward (a DynamicLinear's per-sample weights) and the GELU in
    place, unless a hook on fc1 may hold its output. x: (..., C) -> (..., 4C)."""
    if plain_linear(fc1):
        return linear_gelu_inference(x, fc1.weight, fc1.bias, act.approximate)
    if _has_hooks(fc1):  # a hook may hold fc1's output: leave it as it was
        return act(fc1(x))
    return gelu_inference_(fc1(x), act.approximate)


def linear_add_inference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """residual + x W^T + b, bias and add in the GEMM's epilogue (no autograd). x: (..., K), weight: (D, K),
    residual: (..., D) -> (..., D)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
