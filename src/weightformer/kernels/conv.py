"""Convolutions that torch.compile's CPU backend calls as they are, without re-laying out the tokens around them.

WeightFormer keeps its tokens channels-last, (B, H, W, C), and shows its convolutions a permuted (B, C, H, W)
view of them. Inductor's layout optimisation (`torch._inductor.config.layout_optimization`, always on for oneDNN
convolutions on CPU) gives every 4-D tensor that feeds a convolution, directly or through other ops, the
channels-last strides of a (B, C, H, W) tensor. For the (B, H, W, C) token maps that puts H innermost: the
LayerNorms, the MLPs' GEMM operands and the tensors saved for the backward pass get transposed copies, and
inductor's fused kernels read them against their strides. With a depthwise conv in every block and 1x1 convs in
the dynamic convs' predictors that covers nearly the whole network.

Here, while torch.compile traces for CPU, a convolution runs as the custom op `weightformer::conv2d`: the same
F.conv2d (the same oneDNN kernels, which inductor calls as extern kernels anyway), its backward
aten.convolution_backward, but not an aten.convolution node, so the heuristic leaves the tokens as they are.
On the idle 2-core AMD EPYC of benchmarks/RESULTS.md (`benchmarks/cpu_working_points.sh`, 2 threads, fp32,
separate runs before and after): compiled WeightFormer-T trains at 224² at 33.99 images/s instead of 25.35, and
compiled WeightFormer-DiT-S/2 at latent 32, batch 32, at 10.28 latents/s instead of 7.33 (GENERATION.md).

The models' patch embeddings stay nn.Conv2d: as the first op of the graph they pull no token map into the
heuristic, whose propagation stops at the last convolution. Eager mode, exporting and CPU autocast (which casts
F.conv2d's operands, as the op would not) get F.conv2d itself, and so does CUDA, where the depthwise convs are
Triton ops and inductor's heuristic has further conditions: whether the predictors' 1x1 convs switch it on there
is not measured (no GPU here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv2d", "compiling_for_cpu"]


def compiling_for_cpu(x: torch.Tensor) -> bool:
    """Whether torch.compile (not torch.export) is tracing an op on CPU tensor `x` outside CPU autocast: where the
    custom ops of `weightformer.kernels` stand in for aten ops that inductor would treat less well."""
    return (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )


@torch.library.custom_op("weightformer::conv2d", mutates_args=(), device_types="cpu")
def _conv2d_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
    dilation: list[int], groups: int,
) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


@_conv2d_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)  # the real op's sizes and strides


def _conv2d_setup(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv = (stride, padding, dilation, groups)
    ctx.bias_sizes = None if bias is None else list(bias.shape)


def _conv2d_backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad, x, weight, ctx.bias_sizes, stride, padding, dilation, False, [0, 0], groups, wanted
    )
    return grad_x, grad_weight, grad_bias, None, None, None, None


_conv2d_op.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


def _pair(value: int | tuple[int, ...] | list[int]) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1, groups: int = 1,
) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding, dilation, groups) with numeric padding; under torch.compile on
    CPU (`compiling_for_cpu`) as the custom op weightformer::conv2d, which keeps inductor's channels-last layout
    heuristic off the token maps (see the module docstring). The same function and kernels either way."""
    if compiling_for_cpu(x) and not isinstance(padding, str):
        return _conv2d_op(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
