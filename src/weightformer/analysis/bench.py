"""Throughput and peak memory of WeightFormer against DeiT (timm, fused SDPA attention), across resolutions.

Every contestant runs in the same process on the same inputs, and the timed steps are *interleaved*: each round
times one step of every contestant in turn, so a slow moment of a shared machine hits them all alike. Throughput
is the median over rounds; the ratios are ratios of those medians.

Contestants, for a WeightFormer variant and the DeiT of the same width:
- "wfm": WeightFormer on the fast path (`weightformer.kernels`), eager;
- "wfm_ref": WeightFormer on the plain PyTorch reference path, eager (the release's computation: the
  "reference" columns of benchmarks/RESULTS.md);
- "deit": timm's DeiT, eager, `F.scaled_dot_product_attention` (FlashAttention on CUDA);
- "wfm_compiled", "deit_compiled": the same under `torch.compile` (with `compile_mode` "on" or "both").

Classification: batch size scales as base_batch * (224 / resolution)^2 (at least 1), so every batch holds about
the same number of pixels. Generation: base_batch latents at every latent size (DiT's working point is 32 per
GPU, its global batch 256 over 8; diffusion trains and samples at a fixed batch whatever the resolution). CUDA
runs under bf16 autocast, CPU in fp32.

Beside each measured ratio stands the MAC ratio: baseline MACs over WeightFormer MACs per image, one forward
pass, attention's N^2 products counted (`summary.macs_per_image`), and the efficiency, speed ratio over MAC
ratio: 1.0 means WeightFormer turns its MAC advantage into speed exactly; below 1, each of its MACs runs slower
than the baseline's. A training step costs about three forward passes and a guided sampling step two, for both
contestants alike, so the forward ratio stands for every mode. Every result records the machine it ran on
(`environment`). Peak memory: the most one step (inference, or a training
step) allocates beyond what was allocated before it: CUDA's max_memory_allocated, on CPU the running sum of the
allocations and frees torch.profiler records (one extra, untimed step).
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from .. import kernels
from ..models import MODEL_CONFIGS, compile_blocks, set_grad_checkpointing
from ..models.compilation import COMPILE_SCOPES, resolve_compile_scope
from .summary import DEIT_OF_WIDTH, format_table, macs_per_image

__all__ = ["BenchConfig", "DEIT_OF", "DIT_OF", "run_bench", "use_onednn_linears", "format_results", "plot_results",
           "environment", "describe_environment", "load_average", "prepare", "bench_inputs", "cpu_memory_deltas"]

# WeightFormer variant -> the DeiT of the same width (the widths live in the model registry); for generation,
# WeightFormer-DiT -> DiT's own block (SDPA) at the same width and depth.
DEIT_OF = {name: DEIT_OF_WIDTH[MODEL_CONFIGS[name]["embed_dim"]]
           for name in ("weightformer_tiny", "weightformer_small", "weightformer_tiny_normalized",
                        "weightformer_small_normalized")}
DIT_OF = {"weightformer_dit_s_2": "dit_attn_s_2", "weightformer_dit_b_2": "dit_attn_b_2"}
MODES = ("inference", "train")


@dataclass
class BenchConfig:
    """What `run_bench` measures.

    Args:
        model: a key of `DEIT_OF`.
        resolutions: square input sizes.
        base_batch: classification: batch size at 224x224, scaled by (224 / res)^2 elsewhere; generation: the
            batch at every latent size (not scaled).
        modes: "inference" and/or "train" (forward, cross-entropy, backward, AdamW step).
        compile_mode: "off" (eager only), "on" (compiled only) or "both".
        include_reference: also run WeightFormer's reference path (eager).
        baseline_onednn: classification: DeiT's nn.Linear layers call `kernels.linear` (oneDNN GEMMs on fp32 CPU,
            as WeightFormer's do) instead of torch.matmul; a like-for-like of the architectures on CPU.
        rounds: timed rounds (each times one step of every contestant); the median is reported.
        warmup: untimed steps per contestant first (compilation happens here).
        device: "cpu" or "cuda".
        threads: torch.set_num_threads on CPU (None: leave as is).
        num_classes: classifier outputs (generation: class labels).
        task: "classification" (WeightFormer vs DeiT on images) or "generation" (WeightFormer-DiT vs DiT with
            SDPA on 4-channel latents; resolutions are latent sides, 32 = 256 px; batch = base_batch at every
            latent; "inference" times one guided denoising step of the batch (2 x batch through the network),
            "train" one diffusion training step: forward at random timesteps, MSE to the noise, backward, AdamW).
        reuse_cpu_memory: on CPU, keep freed memory in the process (`kernels.reuse_freed_cpu_memory`) so that
            no contestant page-faults its activations in afresh every step; False: the C library's default.
        checkpoint_activations: every contestant (WeightFormer, reference path and baseline alike) with activation
            checkpointing on (`models.set_grad_checkpointing`): each training step then recomputes the blocks'
            activations in its backward pass. For working points whose activations do not fit in memory
            otherwise (WeightFormer-DiT-B/2 at latent 64, batch 32, on a 24 GiB machine); inference is unchanged.
        compile_scope: what the compiled contestants compile: "model" (`torch.compile` of the whole model, one
            graph), "blocks" (each block on its own, `models.compile_blocks`: the one way compiled training keeps
            activation checkpointing's saving), "auto" (blocks with `checkpoint_activations`, else model).
    """

    model: str = "weightformer_tiny"
    resolutions: list[int] = field(default_factory=lambda: [224, 448, 896])
    base_batch: int = 16
    modes: tuple[str, ...] = MODES
    compile_mode: str = "off"
    include_reference: bool = True
    baseline_onednn: bool = False
    rounds: int = 10
    warmup: int = 2
    device: str = "cpu"
    threads: int | None = None
    num_classes: int = 1000
    task: str = "classification"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # generation: e.g. a smaller width for tests
    reuse_cpu_memory: bool = True
    checkpoint_activations: bool = False
    compile_scope: str = "auto"

    def batch_for(self, resolution: int) -> int:
        if self.task == "generation":
            return self.base_batch
        return max(1, round(self.base_batch * (224 / resolution) ** 2))

    def compiles_blocks(self) -> bool:
        """Whether compiled contestants compile block by block (`compile_scope`, "auto" resolved)."""
        return resolve_compile_scope(self.compile_scope, self.checkpoint_activations) == "blocks"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages of the machine (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment(device: str, load_at_start: list[float] | None = None) -> dict[str, Any]:
    """The machine a measurement ran on, for the record: call it when the measurement ends.

    CPU model, physical and logical cores, the threads torch uses, memory, Python / torch / timm / triton
    versions, the device (the GPU's name, memory and CUDA version on CUDA), the git commit of this package's
    checkout (with "-dirty" when it has uncommitted changes), the load average at the start (`load_at_start`,
    from `load_average()`) and now (on a shared CPU the load says how far the timings can be trusted), and the CPU
    memory settings: freed memory reused, malloc on transparent huge pages (`kernels.huge_pages()`).
    """
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "physical_cores": _physical_cores(),
        "logical_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "commit": _git_commit(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "cpu_memory_reused": kernels.freed_cpu_memory_reused(),  # kernels.reuse_freed_cpu_memory
        "huge_pages": kernels.huge_pages(),  # malloc's memory on transparent huge pages (kernels.allocator)
    }
    try:
        import triton as _triton

        info["triton"] = _triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["device"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = info["cpu"]
    return info


def describe_environment(env: dict[str, Any]) -> str:
    """One line naming the machine of a result (`environment`'s record), for the head of a printed table."""
    cores = f"{env.get('physical_cores') or '?'} physical / {env.get('logical_cores') or '?'} logical cores"
    parts = [f"{env['cpu']} ({cores}, {env.get('threads')} threads, {env.get('memory_gib') or '?'} GiB)"]
    if env.get("cuda") is not None:
        parts.insert(0, f"{env['device']} ({env.get('gpu_memory_gib')} GiB, CUDA {env['cuda']})")
    parts.append(f"torch {env['torch']}, timm {env['timm']}, triton {env.get('triton')}, Python {env['python']}")
    parts.append(f"commit {env.get('commit') or 'unknown'}")
    if "cpu_memory_reused" in env:
        parts.append("freed CPU memory reused" if env["cpu_memory_reused"] else "C library's malloc defaults")
    if env.get("huge_pages"):
        pages = env["huge_pages"]
        mode = f"THP {pages.get('transparent_huge_pages')}"
        if "in_effect" not in pages:  # a record of the kernel's mode only (each of its rows says the rest)
            parts.append(mode)
        else:
            parts.append(f"malloc on huge pages: {'yes' if pages['in_effect'] else 'no'} "
                         f"({mode}, glibc.malloc.hugetlb {pages.get('malloc_hugetlb')})")
    start, end = env.get("load_average_at_start"), env.get("load_average_at_end")
    if start or end:
        fmt = lambda load: "?" if not load else f"{load[0]:.2f}"  # noqa: E731
        parts.append(f"load {fmt(start)} -> {fmt(end)}")
    return "machine: " + "; ".join(parts)


def _physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo (Linux); None elsewhere."""
    try:
        cores, physical = set(), "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical = value.strip()
                elif key.strip() == "core id":
                    cores.add((physical, value.strip()))
        return len(cores) or None
    except OSError:
        return None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _git_commit() -> str | None:
    """The commit of the checkout this package runs from ("-dirty" with uncommitted changes); None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# -- memory --------------------------------------------------------------------------------------------------


def _peak_memory_mb(step: Callable[[], Any], device: str) -> float:
    """Memory one call of `step` allocates at its peak beyond what was allocated before it, in MiB."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return max(itertools.accumulate((d for _, d in cpu_memory_deltas(prof)), initial=0)) / 2**20


def cpu_memory_deltas(prof: profile) -> list[tuple[float, int]]:
    """(time, bytes allocated or freed) of every CPU allocation and free a torch.profiler run with profile_memory=True
    saw, in time order; time in microseconds from the trace's start, as the profiler's events' `time_range`.

    CPU has no allocator statistics, but PyTorch's CPU allocator reports every allocation and free to the profiler.
    These are its raw records, one per allocation or free, not the per-op sums of `prof.events()`: an op's self
    memory nets out what it allocates and frees inside itself, so a compiled graph, one op to the profiler,
    would show only what it returns (or, in training, what it keeps for the backward pass), never its peak.
    Their running sum is the memory allocated since the profiler started.
    """
    results = prof.profiler.kineto_results
    start = results.trace_start_ns()
    cpu = (torch._C._autograd.DeviceType.CPU, torch._C._autograd.DeviceType.MKLDNN,
           torch._C._autograd.DeviceType.IDEEP)
    deltas = [((event.start_ns() - start) / 1e3, event.nbytes()) for event in results.events()
              if event.name() == "[memory]" and event.device_type() in cpu and event.nbytes()]
    deltas.sort(key=lambda d: d[0])  # stable: records at the same instant keep the order they were made in
    return deltas


# -- contestants ---------------------------------------------------------------------------------------------


@dataclass
class _Contestant:
    name: str
    step: Callable[[], Any]


def _make_step(
    model: nn.Module, mode: str, images: torch.Tensor, labels: torch.Tensor, device: str, reference: bool
) -> Callable[[], Any]:
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )
    if mode == "inference":
        model.eval()

        def step() -> Any:
            with torch.inference_mode(), autocast, kernels.use_reference(reference):
                return model(images)

        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> Any:
        with autocast, kernels.use_reference(reference):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return train_step


def _build(name: str, resolution: int, cfg: BenchConfig, onednn_linears: bool = False) -> nn.Module:
    kwargs: dict[str, Any] = dict(img_size=resolution, num_classes=cfg.num_classes)
    model = timm.create_model(name, **kwargs)
    if onednn_linears:
        use_onednn_linears(model)
    if cfg.checkpoint_activations:
        set_grad_checkpointing(model)
    return model.to(cfg.device)


def _onednn_linear_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return kernels.linear(x, module.weight, module.bias)


def use_onednn_linears(model: nn.Module) -> nn.Module:
    """Make every plain nn.Linear of `model` compute through `kernels.linear` (oneDNN GEMMs for fp32 CPU tensors
    in eager mode, F.linear otherwise): the GEMM library WeightFormer's own linear layers use, for a baseline
    compared like for like. Returns `model`, changed in place."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = functools.partial(_onednn_linear_forward, module)
    return model


def _make_dit_step(model: nn.Module, mode: str, latents: torch.Tensor, labels: torch.Tensor, device: str,
                   reference: bool, wrap: Callable[[Any], Any] | None = None) -> Callable[[], Any]:
    """One guided denoising step of the batch (inference), or one diffusion training step; `wrap` (torch.compile)
    applies to what the step calls: the guided forward in inference (compiling the module alone would leave
    `forward_with_cfg`, reached through the wrapper's attribute lookup, running the eager module), the module
    in training."""
    wrap = wrap or (lambda fn: fn)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )
    t = torch.randint(0, 1000, (len(latents),), generator=torch.Generator().manual_seed(0)).to(latents.device)
    if mode == "inference":
        model.eval()
        null = torch.full_like(labels, model.num_classes)
        x2, t2, y2 = torch.cat([latents, latents]), torch.cat([t, t]), torch.cat([labels, null])
        guided = wrap(model.forward_with_cfg)

        def step() -> Any:
            with torch.inference_mode(), autocast, kernels.use_reference(reference):
                return guided(x2, t2, y2, cfg_scale=4.0)

        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    noise = torch.randn_like(latents)
    forward = wrap(model)

    def train_step() -> Any:
        with autocast, kernels.use_reference(reference):
            loss = F.mse_loss(forward(latents + noise, t, labels)[:, : latents.shape[1]].float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return train_step


def _compile_in_place(model: nn.Module) -> nn.Module:
    compile_blocks(model)
    return model


def _dit_contestants(cfg: BenchConfig, resolution: int, mode: str, latents, labels) -> list[_Contestant]:
    from ..models import create_model

    out = []
    suffixes = [""] * (cfg.compile_mode in ("off", "both")) + ["_compiled"] * (cfg.compile_mode in ("on", "both"))
    names = [("wfm_ref", cfg.model, True)] if cfg.include_reference else []
    for suffix in suffixes:
        names += [("wfm" + suffix, cfg.model, False), ("dit" + suffix, DIT_OF[cfg.model], False)]
    for name, model_name, reference in names:
        model = create_model(model_name, input_size=resolution, num_classes=cfg.num_classes, **cfg.model_kwargs)
        if cfg.checkpoint_activations:
            set_grad_checkpointing(model)
        model = model.to(cfg.device)
        wrap = None
        if name.endswith("_compiled") and cfg.compiles_blocks():
            compile_blocks(model)  # in place: the step calls the model as it is
        elif name.endswith("_compiled"):
            wrap = torch.compile  # applied by the step to what it calls
        step = _make_dit_step(model, mode, latents, labels, cfg.device, reference, wrap)
        out.append(_Contestant(name, step))
    return out


def _contestants(cfg: BenchConfig, resolution: int, mode: str, images, labels) -> list[_Contestant]:
    if cfg.task == "generation":
        return _dit_contestants(cfg, resolution, mode, images, labels)
    deit_name = DEIT_OF[cfg.model]
    out = []
    eager = cfg.compile_mode in ("off", "both")
    compiled = cfg.compile_mode in ("on", "both")
    if cfg.include_reference:
        model = _build(cfg.model, resolution, cfg)
        out.append(_Contestant("wfm_ref", _make_step(model, mode, images, labels, cfg.device, reference=True)))
    compiler = _compile_in_place if cfg.compiles_blocks() else torch.compile
    for suffix, wanted, wrap in (("", eager, lambda m: m), ("_compiled", compiled, compiler)):
        if not wanted:
            continue
        wfm = wrap(_build(cfg.model, resolution, cfg))
        deit = wrap(_build(deit_name, resolution, cfg, onednn_linears=cfg.baseline_onednn))
        out.append(_Contestant("wfm" + suffix, _make_step(wfm, mode, images, labels, cfg.device, reference=False)))
        out.append(_Contestant("deit" + suffix, _make_step(deit, mode, images, labels, cfg.device, reference=False)))
    return out


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (pages the kernel mapped and zero-filled on first touch), or None
    where the platform does not count them (no `resource` module: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(step: Callable[[], Any], device: str) -> tuple[float, int | None]:
    """Seconds one call of `step` takes, and the minor page faults during it (None where not counted)."""
    if device == "cuda":
        torch.cuda.synchronize()
    faults = _minor_faults()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, None if faults is None else _minor_faults() - faults


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every contestant at every resolution and mode; returns a JSON-ready dict (see `format_results`)."""
    prepare(cfg)
    load_at_start = load_average()
    log(f"weightformer bench: {cfg.model} vs {_baseline(cfg)} on {cfg.device}")
    rows = []
    for resolution in cfg.resolutions:
        batch = cfg.batch_for(resolution)
        macs = contestant_macs(cfg, resolution)
        images, labels = bench_inputs(cfg, resolution)
        for mode in cfg.modes:
            contestants = _contestants(cfg, resolution, mode, images, labels)
            memory = {}
            for c in contestants:
                for _ in range(cfg.warmup):
                    c.step()
                memory[c.name] = _peak_memory_mb(c.step, cfg.device)
            times: dict[str, list[float]] = {c.name: [] for c in contestants}
            faults: dict[str, list[int | None]] = {c.name: [] for c in contestants}
            for _ in range(cfg.rounds):
                for c in contestants:
                    seconds, step_faults = _timed(c.step, cfg.device)
                    times[c.name].append(seconds)
                    faults[c.name].append(step_faults)
            for c in contestants:
                median = statistics.median(times[c.name])
                fault_counts = None if None in faults[c.name] else faults[c.name]
                rows.append(
                    dict(
                        resolution=resolution,
                        batch=batch,
                        mode=mode,
                        contestant=c.name,
                        images_per_s=batch / median,
                        median_s=median,
                        min_s=min(times[c.name]),
                        peak_memory_mb=memory[c.name],
                        gmacs_per_image=macs[c.name.removesuffix("_compiled")] / 1e9,
                        times_s=times[c.name],
                        # a timed step's fresh pages (CPU: zero-filled by the kernel, time no kernel of ours spends)
                        minor_faults=fault_counts,
                    )
                )
                log(
                    f"{mode:9s} {resolution:5d}px batch {batch:4d}  {c.name:14s} {batch / median:10.2f} img/s"
                    + ("" if memory[c.name] is None else f"  {memory[c.name]:9.1f} MiB")
                    + ("" if fault_counts is None else f"  {statistics.median(fault_counts):9.0f} page faults/step")
                )
            del contestants
            gc.collect()
    return dict(config=asdict(cfg), environment=environment(cfg.device, load_at_start), rows=rows,
                ratios=_ratios(rows))


def contestant_macs(cfg: BenchConfig, resolution: int) -> dict[str, int]:
    """MACs per image of one forward pass, attention included, of each contestant kind ("wfm", "wfm_ref" and the
    baseline's "deit" or "dit"; compiled ones are the same models)."""
    kwargs = dict(cfg.model_kwargs, num_classes=cfg.num_classes)
    wfm = macs_per_image(cfg.model, resolution, **kwargs).total
    baseline = macs_per_image(_baseline(cfg), resolution, **kwargs).total
    return {"wfm": wfm, "wfm_ref": wfm, ("dit" if cfg.task == "generation" else "deit"): baseline}


def prepare(cfg: BenchConfig) -> None:
    """Raise a one-line ValueError for a config the bench cannot run; set the CPU threads."""
    _check_models(cfg)
    if cfg.compile_mode not in ("off", "on", "both"):
        raise ValueError(f"compile_mode must be 'off', 'on' or 'both', got {cfg.compile_mode!r}.")
    if cfg.compile_scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope must be 'auto', 'model' or 'blocks', got {cfg.compile_scope!r}.")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available.")
    patch, smallest = (2, 8) if cfg.task == "generation" else (16, 48)
    bad = [r for r in cfg.resolutions if r < smallest or r % patch]
    if bad:
        raise ValueError(f"Resolutions must be multiples of the patch size {patch} and at least {smallest} (a "
                         f"{smallest // patch}x{smallest // patch} token grid); got {', '.join(map(str, bad))}.")
    if cfg.rounds < 1 or cfg.base_batch < 1 or cfg.warmup < 0:
        raise ValueError(f"rounds and base batch must be at least 1 and warmup at least 0; got {cfg.rounds}, "
                         f"{cfg.base_batch}, {cfg.warmup}.")
    if cfg.device == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cpu" and (cfg.reuse_cpu_memory or kernels.freed_cpu_memory_reused()):
        kernels.reuse_freed_cpu_memory(cfg.reuse_cpu_memory)


def bench_inputs(cfg: BenchConfig, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every contestant sees at `resolution`: images (or 4-channel latents) and class labels."""
    batch = cfg.batch_for(resolution)
    gen = torch.Generator().manual_seed(resolution)
    channels = 4 if cfg.task == "generation" else 3
    images = torch.randn(batch, channels, resolution, resolution, generator=gen).to(cfg.device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=gen).to(cfg.device)
    return images, labels


def _check_models(cfg: BenchConfig) -> None:
    if cfg.task not in ("classification", "generation"):
        raise ValueError(f"task must be 'classification' or 'generation', got {cfg.task!r}.")
    known = DIT_OF if cfg.task == "generation" else DEIT_OF
    if cfg.model not in known:
        raise ValueError(f"bench ({cfg.task}) compares {sorted(known)} with their baselines; got {cfg.model!r}.")


def _baseline(cfg: BenchConfig) -> str:
    return DIT_OF[cfg.model] if cfg.task == "generation" else DEIT_OF[cfg.model]


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per resolution and mode: the MAC ratio (baseline over WeightFormer, per image), and each WeightFormer
    contestant's throughput over the baseline's, that over the MAC ratio (efficiency), and memory."""
    index = {(r["resolution"], r["mode"], r["contestant"]): r for r in rows}
    out = []
    for resolution, mode in dict.fromkeys((r["resolution"], r["mode"]) for r in rows):
        entry: dict[str, Any] = dict(resolution=resolution, mode=mode)
        pairs = [(w, b + suffix) for b in ("deit", "dit") for w, suffix in
                 (("wfm", ""), ("wfm_ref", ""), ("wfm_compiled", "_compiled"))]
        for wfm, deit in pairs:
            a, b = index.get((resolution, mode, wfm)), index.get((resolution, mode, deit))
            if a is None or b is None:
                continue
            mac_ratio = b["gmacs_per_image"] / a["gmacs_per_image"]
            entry.setdefault("MAC ratio", mac_ratio)
            entry[f"{wfm}/{deit} speed"] = a["images_per_s"] / b["images_per_s"]
            entry[f"{wfm}/{deit} efficiency"] = entry[f"{wfm}/{deit} speed"] / mac_ratio
            if a["peak_memory_mb"] and b["peak_memory_mb"]:
                entry[f"{wfm}/{deit} memory"] = a["peak_memory_mb"] / b["peak_memory_mb"]
        out.append(entry)
    return out


def format_results(results: dict[str, Any]) -> str:
    """The machine, the ratio table (one line per mode and resolution: MAC ratio, then each measured ratio and its
    efficiency) and the raw throughputs."""

    ratios = results["ratios"]
    keys = [k for k in dict.fromkeys(k for e in ratios for k in e) if k not in ("resolution", "mode")]
    table = [[e["mode"], e["resolution"], *("-" if k not in e else f"{e[k]:.2f}x" for k in keys)] for e in ratios]
    text = [describe_environment(results["environment"]), ""]
    if results["config"].get("baseline_onednn"):
        text += ["baseline: DeiT's linear layers on oneDNN GEMMs, as WeightFormer's (--baseline-onednn)", ""]
    if results["config"].get("checkpoint_activations"):
        text += ["every contestant trains with activation checkpointing (--checkpoint-activations)", ""]
    compiled_rows = any(r["contestant"].endswith("_compiled") for r in results["rows"])
    scope = results["config"].get("compile_scope", "model")  # files from before the option compiled whole models
    checkpointed = results["config"].get("checkpoint_activations", False)
    if compiled_rows and resolve_compile_scope(scope, checkpointed) == "blocks":
        text += [f"compiled contestants compile block by block (--compile-scope {scope})", ""]
    text += [format_table(["mode", "res", *keys], table), ""]
    names = list(dict.fromkeys(r["contestant"] for r in results["rows"]))
    index = {(r["resolution"], r["mode"], r["contestant"]): r for r in results["rows"]}
    raw = []
    for e in ratios:
        cells = [e["mode"], e["resolution"], index[(e["resolution"], e["mode"], names[0])]["batch"]]
        for n in names:
            r = index.get((e["resolution"], e["mode"], n))
            mem = "-" if r is None or r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
            cells += ["-" if r is None else f"{r['images_per_s']:.2f}", mem]
        raw.append(cells)
    headers = ["mode", "res", "batch"] + [h for n in names for h in (f"{n} img/s", f"{n} MiB")]
    text.append(format_table(headers, raw))
    return "\n".join(text)


def plot_results(results: dict[str, Any], path: str) -> None:
    """Log-log plot of throughput and peak memory against resolution, one line per contestant and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"inference": "-", "train": "--"}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for name in dict.fromkeys(r["contestant"] for r in rows):
            series = sorted(
                (r for r in rows if r["mode"] == mode and r["contestant"] == name), key=lambda r: r["resolution"]
            )
            if not series:
                continue
            res = [r["resolution"] for r in series]
            label = f"{name} ({mode})"
            axes[0].plot(res, [r["images_per_s"] for r in series], styles[mode], marker="o", label=label)
            mem = [(r["resolution"], r["peak_memory_mb"]) for r in series if r["peak_memory_mb"]]
            if mem:
                axes[1].plot(*zip(*mem, strict=True), styles[mode], marker="o", label=label)
    env = results["environment"]
    for ax, ylabel in zip(axes, ("images / s", "peak memory per step (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("resolution (pixels per side)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ticks = sorted({r["resolution"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    axes[0].legend(fontsize=8)
    cfg = results["config"]
    baseline = DIT_OF.get(cfg["model"]) or DEIT_OF[cfg["model"]]
    baseline += " (oneDNN linears)" if cfg.get("baseline_onednn") else ""
    fig.suptitle(f"{cfg['model']} vs {baseline} on {env['device']} ({cfg['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
