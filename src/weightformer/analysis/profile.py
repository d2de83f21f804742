"""Where the time goes: torch.profiler over WeightFormer and DeiT, time and MACs per op family.

`weightformer profile` runs one classification step of WeightFormer and of the DeiT of the same width (the
contestants of `weightformer bench`, same inputs, same batch, fast path, eager) under torch.profiler with
recorded shapes, alternating the two models step by step, and sums each op's *self* time into one family.
With task "generation" the two are WeightFormer-DiT and the attention DiT of the same size, and the steps are
the bench's guided sampling step and diffusion training step on latents.

    GEMM                     linear / addmm / mm / bmm / baddbmm (MKL) and oneDNN's linear with fused epilogues
                             (mkldnn::_linear_pointwise) and weight gradient (mkldnn_linear_backward_weights, with
                             the to_mkldnn copies of its operands), outside the dynamic predictors
    depthwise conv (static)  the 3x3 token mixer of static blocks (forward and backward)
    depthwise conv (dynamic) the per-sample 3x3 conv of dynamic blocks (its kernel predictor excluded)
    patch embedding conv     the stem conv (16x16 stride 16; DiT's 2x2 stride 2): any conv that is not depthwise
    layer norm               native_layer_norm and its backward
    dynamic predictors       every op inside a kernel or weight predictor (pooling, small projections, GELU/SiLU,
                             outer-product sum, column / kernel normalisation), forward and backward
    attention (SDPA)         scaled_dot_product_attention and its backward
    elementwise & copies     GELU, adds, muls, copies (contiguous, permutes made real, bias broadcasts), ...
    reductions & pooling     means and sums outside the predictors (head pooling, bias gradients)
    optimizer                AdamW's step and zero_grad
    other                    loss, and time spent in Python or autograd between ops

On a shared machine, run it with --threads 1: with two threads, every small op's OpenMP barrier waits for a
thread the OS may have descheduled, and self times swing by 10x and more; one thread's are stable.

A kernel op is assigned by its outermost aten op (aten::linear's addmm is a GEMM, aten::contiguous's copy_ is a
copy); backward ops by the forward op that created their autograd node (its sequence number), so the predictors'
backward counts as predictor time. The dynamic convs and their kernel predictors are marked by forward hooks on
those modules alone, which leave the fast path as it is; the dynamic linear layers mark their predictors with a
profiler range of their own.

MACs come from the recorded shapes of the leaf GEMMs (mm, addmm, bmm, baddbmm, oneDNN linear), convolutions
(forward, and the gradients their backward computes), SDPA (torch's flop formulas) and LayerNorm (fvcore's 5
per element; 0 in its backward). Elementwise ops count 0 MACs, as in fvcore: "GMAC/s" is only meaningful for
the MAC families.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from ..layers import DynamicDWConv2d
from ..layers.dynamic_linear import PREDICTOR_RANGE
from .bench import (
    DEIT_OF,
    DIT_OF,
    BenchConfig,
    _build,
    _make_dit_step,
    _make_step,
    bench_inputs,
    environment,
    load_average,
    prepare,
)
from .summary import format_table

__all__ = ["FAMILIES", "ProfileConfig", "run_profile", "format_profile"]

FAMILIES = (
    "GEMM",
    "depthwise conv (static)",
    "depthwise conv (dynamic)",
    "patch embedding conv",
    "layer norm",
    "dynamic predictors",
    "attention (SDPA)",
    "elementwise & copies",
    "reductions & pooling",
    "optimizer",
    "other",
)
_PREDICTOR, _DYNAMIC_CONV = PREDICTOR_RANGE, "weightformer::dynamic_conv"
# mkldnn_linear_backward_weights: oneDNN's weight (and bias) gradient of a linear layer, with the to_mkldnn
# copies of its operands (`kernels.mlp._onednn_weight_grad`).
_GEMMS = {"linear", "addmm", "mm", "bmm", "baddbmm", "matmul", "einsum", "_addmm_activation", "addmm_",
          "baddbmm_", "_linear_pointwise", "mkldnn_linear_backward_weights", "to_mkldnn"}
_CONVS = {"conv2d", "convolution", "_convolution", "mkldnn_convolution", "convolution_backward"}
_NORMS = {"layer_norm", "native_layer_norm", "native_layer_norm_backward"}
_REDUCTIONS = {"mean", "sum", "amax", "avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
               "linalg_vector_norm", "sum_to_size"}
_LOSS = {"cross_entropy", "cross_entropy_loss", "log_softmax", "_log_softmax", "nll_loss", "nll_loss_nd",
         "nll_loss_forward", "nll_loss_backward", "_log_softmax_backward_data"}


@dataclass
class ProfileConfig:
    """What `run_profile` measures.

    Args:
        model: a key of `weightformer.analysis.bench.DEIT_OF` (WeightFormer-T or -S; DeiT of the same width too),
            or with task "generation" of `DIT_OF` (WeightFormer-DiT-S/2 or -B/2; the attention DiT too).
        resolution: square input size (generation: the latent side).
        batch: batch size (generation: latents; a guided sampling step runs twice as many through the network).
        modes: "inference" and/or "train" (forward, cross-entropy, backward, AdamW step), as in the bench;
            generation: a guided denoising step and a diffusion training step.
        steps: profiled steps per model and mode (alternating the models); times are per step, medians.
        warmup: unprofiled steps per model first.
        threads: torch.set_num_threads (None: leave as is).
        task: "classification" or "generation".
        reuse_cpu_memory: keep freed CPU memory for reuse (`kernels.reuse_freed_cpu_memory`), as the bench does.
    """

    model: str = "weightformer_tiny"
    resolution: int = 224
    batch: int = 16
    modes: tuple[str, ...] = ("inference", "train")
    steps: int = 2
    warmup: int = 1
    threads: int | None = None
    task: str = "classification"
    reuse_cpu_memory: bool = True


def _mark(model: nn.Module) -> list[Any]:
    """Forward hooks that open a profiler range around each dynamic depthwise conv and its kernel predictor.

    The dynamic linear layers mark their predictors themselves (`PREDICTOR_RANGE`): a hook on their predictor
    would make them take the formed-update path, as for any observed predictor.
    """
    handles = []

    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            module._profile_range = record_function(name)
            module._profile_range.__enter__()

        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        module._profile_range.__exit__(None, None, None)

    for module in model.modules():
        if isinstance(module, DynamicDWConv2d):
            for target, name in ((module, _DYNAMIC_CONV), (module.predictor, _PREDICTOR)):
                handles.append(target.register_forward_pre_hook(enter(name)))
                handles.append(target.register_forward_hook(leave))
    return handles


# -- MACs from recorded shapes -------------------------------------------------------------------------------


def _macs(name: str, shapes: list[Any], concrete: list[Any]) -> int:
    """MACs of one leaf op from its recorded input shapes (and scalar arguments); 0 when not a MAC op."""
    try:
        if name == "_linear_pointwise":  # oneDNN linear with a fused epilogue: (x, [other,] weight, bias, ...)
            x = shapes[0]
            weight = next(s for s in shapes[1:] if len(s) == 2 and s[1] == x[-1])
            return prod(x[:-1]) * weight[0] * weight[1]
        if name == "mkldnn_linear_backward_weights":  # (grad (N, D), x (N, C), weight (D, C), bias_defined)
            return prod(shapes[0]) * shapes[1][-1]
        if name in ("mm", "addmm", "addmm_", "_addmm_activation"):
            a, b = shapes[-2:] if name == "mm" else shapes[1:3]
            return a[0] * a[1] * b[1]
        if name in ("bmm", "baddbmm", "baddbmm_"):
            a, b = shapes[-2:] if name == "bmm" else shapes[1:3]
            return a[0] * a[1] * a[2] * b[2]
        if name == "convolution":
            x, w = shapes[0], shapes[1]
            stride, padding, dilation = concrete[3], concrete[4], concrete[5]
            out = [(x[2 + i] + 2 * padding[i] - dilation[i] * (w[2 + i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
            return x[0] * w[0] * prod(out) * prod(w[1:])
        if name == "convolution_backward":
            grad, w = shapes[0], shapes[2]
            mask = concrete[10] if concrete and concrete[10] is not None else [True, True]
            return grad[0] * w[0] * prod(grad[2:]) * prod(w[1:]) * (int(mask[0]) + int(mask[1]))
        if name == "native_layer_norm":
            return 5 * prod(shapes[0])
        if name == "_scaled_dot_product_flash_attention_for_cpu":
            return sdpa_flop_count(shapes[0], shapes[1], shapes[2]) // 2
        if name == "_scaled_dot_product_flash_attention_for_cpu_backward":
            return sdpa_backward_flop_count(shapes[0], shapes[1], shapes[2], shapes[3]) // 2
    except (IndexError, TypeError, ValueError):
        return 0
    return 0


# -- attribution ---------------------------------------------------------------------------------------------


def _chain(event: Any) -> list[Any]:
    chain = []
    while event is not None:
        chain.append(event)
        event = event.cpu_parent
    return chain  # the event first, the root last


def _family(outermost: Any | None, scope: str | None, optimizer: bool) -> str:
    if optimizer:
        return "optimizer"
    if scope == _PREDICTOR:
        return "dynamic predictors"
    if outermost is None:
        return "other"
    name = outermost.name.split("::")[-1]
    if name in _GEMMS:
        return "GEMM"
    if name in _CONVS:
        shapes = outermost.input_shapes or []
        weight = shapes[2 if name == "convolution_backward" else 1] if len(shapes) > 2 else None
        if weight and len(weight) == 4 and weight[1] > 1:  # more than one input channel per group: not depthwise
            return "patch embedding conv"
        return "depthwise conv (dynamic)" if scope == _DYNAMIC_CONV else "depthwise conv (static)"
    if name in _NORMS:
        return "layer norm"
    if "scaled_dot_product" in name:
        return "attention (SDPA)"
    if name in _LOSS:
        return "other"
    if name in _REDUCTIONS:
        return "reductions & pooling"
    return "elementwise & copies"


def _attribute(prof: profile) -> dict[str, dict[str, float]]:
    """Self time (ms) and MACs per family, over one profiled step."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    scope_of_sequence: dict[int, str] = {}
    info = []
    for event in events:
        chain = _chain(event)
        names = [e.name for e in chain]
        scope = next((n for n in names if n in (_PREDICTOR, _DYNAMIC_CONV)), None)
        node = next((e for e in chain if e.name.startswith("autograd::engine::evaluate_function")), None)
        if node is not None and scope is None:
            scope = scope_of_sequence.get(node.sequence_nr)
        optimizer = any(n.startswith("Optimizer.") for n in names)
        aten = [e for e in chain if e.name.startswith(("aten::", "mkldnn::"))]
        info.append((event, scope, optimizer, aten[-1] if aten else None))
        if node is None and scope is not None and getattr(event, "sequence_nr", -1) >= 0:
            scope_of_sequence[event.sequence_nr] = scope
    # Backward ops run after every forward op, so the second pass sees the complete sequence map.
    out: dict[str, dict[str, Any]] = {f: dict(ms=0.0, macs=0, ops=defaultdict(float)) for f in FAMILIES}
    for event, scope, optimizer, outermost in info:
        if scope is None:
            node = next((e for e in _chain(event) if e.name.startswith("autograd::engine::evaluate_function")), None)
            scope = scope_of_sequence.get(node.sequence_nr) if node is not None else None
        family = _family(outermost, scope, optimizer)
        out[family]["ms"] += event.self_cpu_time_total / 1e3
        if event.self_cpu_time_total:
            op = outermost.name if outermost is not None else event.name
            out[family]["ops"][f"{op} <- {event.name} {event.input_shapes}"] += event.self_cpu_time_total / 1e3
        # Counted at the ops that carry the shapes (aten::linear's addmm, aten::conv2d's convolution), never twice.
        concrete = getattr(event, "concrete_inputs", None) or []
        out[family]["macs"] += _macs(event.name.split("::")[-1], event.input_shapes or [], concrete)
    return out


# -- the run -------------------------------------------------------------------------------------------------


@dataclass
class _Contestant:
    name: str
    step: Callable[[], Any]
    model: nn.Module
    profiles: list[dict[str, dict[str, float]]] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)


def run_profile(cfg: ProfileConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Profile WeightFormer and its DeiT; returns a JSON-ready dict (see `format_profile`)."""
    bench = BenchConfig(model=cfg.model, task=cfg.task, resolutions=[cfg.resolution], base_batch=cfg.batch,
                        threads=cfg.threads, device="cpu", reuse_cpu_memory=cfg.reuse_cpu_memory)
    prepare(bench)
    generation = cfg.task == "generation"
    baseline = (DIT_OF if generation else DEIT_OF)[cfg.model]
    images, labels = bench_inputs(bench, cfg.resolution)
    images, labels = images[: cfg.batch], labels[: cfg.batch]
    load_at_start = load_average()
    results: dict[str, Any] = dict(config=asdict(cfg), deit=baseline, threads=torch.get_num_threads(), modes={})
    for mode in cfg.modes:
        contestants = []
        for name in (cfg.model, baseline):
            if generation:
                from ..models import create_model

                model = create_model(name, input_size=cfg.resolution, num_classes=bench.num_classes)
                step = _make_dit_step(model, mode, images, labels, "cpu", False)
            else:
                model = _build(name, cfg.resolution, bench)
                step = _make_step(model, mode, images, labels, "cpu", False)
            contestants.append(_Contestant(name, step, model))
        for c in contestants:
            for _ in range(cfg.warmup):
                c.step()
        for _ in range(cfg.steps):
            for c in contestants:
                with ExitStack() as stack:
                    for handle in _mark(c.model):
                        stack.callback(handle.remove)
                    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                        start = time.perf_counter()
                        c.step()
                        c.wall_ms.append((time.perf_counter() - start) * 1e3)
                c.profiles.append(_attribute(prof))
        results["modes"][mode] = {c.name: _summarise(c) for c in contestants}
        log(f"profiled {mode}: " + ", ".join(f"{c.name} {statistics.median(c.wall_ms):.0f} ms" for c in contestants))
    results["environment"] = environment("cpu", load_at_start)
    return results


def _summarise(c: _Contestant) -> dict[str, Any]:
    families = {}
    for family in FAMILIES:
        ms = statistics.median(p[family]["ms"] for p in c.profiles)
        macs = c.profiles[0][family]["macs"]
        ops = sorted(c.profiles[-1][family]["ops"].items(), key=lambda kv: -kv[1])[:8]
        families[family] = dict(ms=ms, gmacs=macs / 1e9, gmacs_per_s=(macs / 1e9) / (ms / 1e3) if macs and ms else None,
                                top_ops={k: round(v, 2) for k, v in ops})
    total_ms = sum(f["ms"] for f in families.values())
    total_gmacs = sum(f["gmacs"] for f in families.values())
    return dict(families=families, total_ms=total_ms, total_gmacs=total_gmacs, wall_ms=statistics.median(c.wall_ms),
                gmacs_per_s=total_gmacs / (total_ms / 1e3))


def format_profile(results: dict[str, Any]) -> str:
    """One table per mode: time, share, GMACs and GMAC/s per family, WeightFormer and DeiT side by side."""
    text = []
    cfg = results["config"]
    for mode, by_model in results["modes"].items():
        names = list(by_model)
        headers = ["family"] + [h for n in names for h in (f"{_short(n)} ms", "%", "GMAC", "GMAC/s")]
        rows = []
        for family in FAMILIES:
            cells: list[object] = [family]
            for n in names:
                f, total = by_model[n]["families"][family], by_model[n]["total_ms"]
                cells += [f"{f['ms']:.1f}", f"{100 * f['ms'] / total:.1f}", f"{f['gmacs']:.3f}" if f["gmacs"] else "-",
                          f"{f['gmacs_per_s']:.1f}" if f["gmacs_per_s"] else "-"]
            rows.append(cells)
        cells = ["total (profiled self time)"]
        for n in names:
            m = by_model[n]
            cells += [f"{m['total_ms']:.1f}", "100", f"{m['total_gmacs']:.3f}", f"{m['gmacs_per_s']:.1f}"]
        rows.append(cells)
        ratio = by_model[names[1]]["total_ms"] / by_model[names[0]]["total_ms"]
        text.append(f"{mode}, {cfg['resolution']}x{cfg['resolution']}, batch {cfg['batch']}, "
                    f"{results['threads']} threads, median of {cfg['steps']} profiled steps; "
                    f"{_short(names[0])}/{_short(names[1])} speed (profiled) {ratio:.2f}x")
        text += [format_table(headers, rows), ""]
    return "\n".join(text).rstrip()


def _short(name: str) -> str:
    return {"weightformer_tiny": "WF-T", "weightformer_small": "WF-S", "deit_tiny_patch16_224": "DeiT-T",
            "deit_small_patch16_224": "DeiT-S", "weightformer_dit_s_2": "WF-DiT-S/2", "dit_attn_s_2": "DiT-S/2",
            "weightformer_dit_b_2": "WF-DiT-B/2", "dit_attn_b_2": "DiT-B/2"}.get(name, name)
