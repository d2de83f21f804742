"""Training memory with and without activation checkpointing: `weightformer bench --grad-checkpointing`.

One training step (forward, loss, backward, AdamW step) of a WeightFormer classifier or WeightFormer-DiT, built
twice with the same weights, once with `set_grad_checkpointing` and once without, on the same batch. Measured per
step, after at least one warm-up step (so the AdamW state exists already and is not counted):

- activations: memory allocated by the forward pass and the loss that is still allocated when the backward pass
  begins, i.e. what the autograd graph keeps for the backward pass. Without checkpointing that is every block's
  saved tensors; with it, each block's input plus what the layers outside the blocks save.
- peak: the most memory allocated at any moment of the step beyond what was allocated before it (parameters and
  optimizer state): the activations, the gradients, the block being recomputed, the optimizer's temporaries.
- step time: the median of `rounds` steps, with and without checkpointing interleaved (not profiled): the price
  of recomputing the blocks.

CUDA: `torch.cuda.memory_allocated` and `max_memory_allocated`, under bf16 autocast like the rest of the bench.
CPU, fp32: every allocation and free PyTorch's CPU allocator reports to torch.profiler, replayed in time order
(allocator-level bytes: what tensors occupy, not the process's resident memory).
"""

from __future__ import annotations

import gc
import itertools
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from ..models import create_model, set_grad_checkpointing
from .bench import (
    BenchConfig,
    _timed,
    bench_inputs,
    cpu_memory_deltas,
    describe_environment,
    environment,
    load_average,
    prepare,
)
from .summary import format_table

__all__ = ["MEASURED", "run_checkpointing_bench", "format_checkpointing_results"]

MEASURED = (
    "activations: memory allocated during the forward pass and loss that is still allocated when backward starts "
    "(what autograd keeps for the backward pass); peak: the most allocated at any moment of a training step "
    "(forward, backward, AdamW) beyond the parameters and optimizer state allocated before it. CUDA: "
    "torch.cuda.memory_allocated / max_memory_allocated; CPU: the CPU allocator's allocations and frees as "
    "recorded by torch.profiler (tensor bytes, not resident memory)."
)
_BACKWARD_MARK = "weightformer_bench::backward_and_optimizer"
_MIB = 2**20


@dataclass
class _TrainStep:
    """A training step in two halves, so that the memory between forward and backward can be read."""

    forward: Callable[[], torch.Tensor]  # -> the loss
    finish: Callable[[torch.Tensor], None]  # backward and optimizer step

    def __call__(self) -> None:
        self.finish(self.forward())


def _build(cfg: BenchConfig, resolution: int, enable: bool) -> nn.Module:
    torch.manual_seed(0)  # the same weights with and without checkpointing
    size = dict(input_size=resolution) if cfg.task == "generation" else dict(img_size=resolution)
    model = create_model(cfg.model, num_classes=cfg.num_classes, **size, **cfg.model_kwargs)
    set_grad_checkpointing(model, enable)
    return model.to(cfg.device).train()


def _train_step(model: nn.Module, cfg: BenchConfig, inputs: torch.Tensor, labels: torch.Tensor) -> _TrainStep:
    """Classification: cross-entropy on the images; generation: MSE to the noise at random timesteps."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.device == "cuda" else nullcontext()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (len(inputs),), generator=gen).to(inputs.device)
    noise = torch.randn(inputs.shape, generator=gen).to(inputs.device)

    def loss() -> torch.Tensor:
        with autocast:
            if cfg.task == "generation":
                out = model(inputs + noise, t, labels)[:, : inputs.shape[1]]  # the noise prediction
                return F.mse_loss(out.float(), noise)
            return F.cross_entropy(model(inputs).float(), labels)

    def finish(value: torch.Tensor) -> None:
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _TrainStep(loss, finish)


def _measure(step: _TrainStep, device: str) -> tuple[float, float]:
    """(activations, peak) of one step in MiB, as described in the module docstring."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = step.forward()
        torch.cuda.synchronize()
        activations = torch.cuda.memory_allocated() - before
        step.finish(loss)
        torch.cuda.synchronize()
        return activations / _MIB, (torch.cuda.max_memory_allocated() - before) / _MIB
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = step.forward()
        with record_function(_BACKWARD_MARK):  # marks the moment the forward pass's memory is read
            step.finish(loss)
    backward_start = next(e.time_range.start for e in prof.events() if e.name == _BACKWARD_MARK)
    deltas = cpu_memory_deltas(prof)
    activations = sum(d for time, d in deltas if time < backward_start)
    peak = max(itertools.accumulate((d for _, d in deltas), initial=0))
    return activations / _MIB, peak / _MIB


def run_checkpointing_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Activations, peak and step time of `cfg.model` with and without checkpointing at every resolution.

    Uses cfg's model, task, resolutions, base_batch, rounds, warmup (at least 1), device, threads, num_classes
    and model_kwargs; training steps only, eager. Returns a JSON-ready dict (see `format_checkpointing_results`).
    """
    prepare(cfg)
    load_at_start = load_average()
    log(f"weightformer bench --grad-checkpointing: {cfg.model} on {cfg.device}")
    rows = []
    for resolution in cfg.resolutions:
        inputs, labels = bench_inputs(cfg, resolution)
        steps = {enable: _train_step(_build(cfg, resolution, enable), cfg, inputs, labels) for enable in (False, True)}
        memory = {}
        for enable, step in steps.items():
            for _ in range(max(cfg.warmup, 1)):
                step()
            memory[enable] = _measure(step, cfg.device)
        times: dict[bool, list[float]] = {enable: [] for enable in steps}
        for _ in range(cfg.rounds):
            for enable, step in steps.items():
                times[enable].append(_timed(step, cfg.device)[0])
        for enable in steps:
            row = dict(resolution=resolution, batch=len(inputs), grad_checkpointing=enable,
                       activations_mb=memory[enable][0], peak_memory_mb=memory[enable][1],
                       median_s=statistics.median(times[enable]), times_s=times[enable])
            rows.append(row)
            log(f"train {resolution:5d}px batch {len(inputs):4d}  checkpointing {'on ' if enable else 'off'}  "
                f"activations {row['activations_mb']:9.1f} MiB  peak {row['peak_memory_mb']:9.1f} MiB  "
                f"{row['median_s']:8.3f} s/step")
        del steps
        gc.collect()
    return dict(bench="grad_checkpointing", measured=MEASURED, config=asdict(cfg),
                environment=environment(cfg.device, load_at_start), rows=rows, ratios=_ratios(rows))


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per resolution: activations and peak without checkpointing over with it; step time with over without."""
    index = {(r["resolution"], r["grad_checkpointing"]): r for r in rows}
    out = []
    for resolution in dict.fromkeys(r["resolution"] for r in rows):
        off, on = index[(resolution, False)], index[(resolution, True)]
        out.append({"resolution": resolution,
                    "activations off/on": off["activations_mb"] / on["activations_mb"],
                    "peak off/on": off["peak_memory_mb"] / on["peak_memory_mb"],
                    "step time on/off": on["median_s"] / off["median_s"]})
    return out


def format_checkpointing_results(results: dict[str, Any]) -> str:
    """The measurements (one line per resolution and setting), the ratios, and what was measured."""
    rows = [[r["resolution"], r["batch"], "on" if r["grad_checkpointing"] else "off", f"{r['activations_mb']:.1f}",
             f"{r['peak_memory_mb']:.1f}", f"{r['median_s']:.3f}"] for r in results["rows"]]
    headers = ["res", "batch", "checkpointing", "activations MiB", "peak MiB", "s/step"]
    keys = ["activations off/on", "peak off/on", "step time on/off"]
    ratios = [[e["resolution"], *(f"{e[k]:.2f}x" for k in keys)] for e in results["ratios"]]
    return "\n".join([describe_environment(results["environment"]), "", format_table(headers, rows), "",
                      format_table(["res", *keys], ratios), "",
                      f"Measured: {results['measured']}"])
