"""`weightformer bench`: WeightFormer against DeiT (fused SDPA attention), throughput and memory per resolution;
with --grad-checkpointing, training memory with and without activation checkpointing."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..analysis.bench import MODES, BenchConfig, format_results, plot_results, run_bench
from ..analysis.checkpointing import format_checkpointing_results, run_checkpointing_bench
from ..engine.distributed import resolve_device
from ..models.compilation import COMPILE_SCOPES
from .options import add_device, add_output, add_system_malloc

_VARIANTS = {"tiny": "weightformer_tiny", "small": "weightformer_small",
             "tiny_normalized": "weightformer_tiny_normalized", "small_normalized": "weightformer_small_normalized"}
_DIT_VARIANTS = {"small": "weightformer_dit_s_2", "base": "weightformer_dit_b_2"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="throughput and peak memory of WeightFormer vs DeiT (SDPA) across resolutions, inference and training",
        description=(
            "Times WeightFormer (fast path, and the reference path) against timm's DeiT of the same width, "
            "interleaved in one process; bf16 autocast on CUDA, fp32 on CPU. Prints a ratio table, writes JSON "
            "and a log-log plot, with the MAC ratio (attention's N^2 products counted) beside each measured ratio. "
            "Classification: batch = base batch * (224 / res)^2; generation: base batch at every latent."
        ),
    )
    parser.add_argument(
        "--task", default="classification", choices=["classification", "generation"],
        help="generation: WeightFormer-DiT/2 vs DiT/2 (SDPA) on latents; --resolutions are latent sides "
        "(default 32 64 128 = 256, 512, 1024 px on CUDA, 32 on CPU), batch = base batch at every latent "
        "(default 32, DiT's batch per GPU)",
    )
    parser.add_argument(
        "--model", default=None, choices=sorted({*_VARIANTS, *_DIT_VARIANTS}),
        help="variant (default tiny; generation: small)"
    )
    add_device(parser)
    parser.add_argument(
        "--resolutions", type=int, nargs="+", help="default: 224 448 896 on CPU, 224 448 672 896 1248 1536 on CUDA"
    )
    parser.add_argument("--base-batch", type=int, help="batch size at 224x224 (default 16 on CPU, 256 on CUDA); "
                        "generation: the batch at every latent (default 32)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to time")
    _add_compile_options(parser)
    parser.add_argument("--no-reference", action="store_true", help="skip WeightFormer's reference path")
    parser.add_argument(
        "--baseline-onednn", action="store_true",
        help="classification on CPU: DeiT's linear layers run on the same oneDNN GEMMs as WeightFormer's "
        "(weightformer.kernels.linear), a like-for-like of the two architectures; timm's DeiT calls torch.matmul "
        "(MKL on x86). Generation's DiT baseline always shares WeightFormer-DiT's linear layers",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds, median reported (default 10 on CPU, 3 for "
                        "generation on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contestant (default 2)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--checkpoint-activations", action="store_true",
        help="train every contestant (WeightFormer and baseline alike) with activation checkpointing, for working "
        "points whose activations do not fit in memory otherwise; inference is unchanged",
    )
    add_system_malloc(parser)
    add_output(parser, "output prefix: writes PREFIX.json and PREFIX.png", default="bench", metavar="PREFIX")
    parser.add_argument(
        "--grad-checkpointing", action="store_true",
        help="instead: training memory of the WeightFormer model with and without activation checkpointing "
        "(activations kept for the backward pass, step peak, step time; eager training steps, no baseline; "
        "--modes, --compile and --no-reference do not apply; default --rounds 3 on CPU); writes PREFIX.json only",
    )
    parser.set_defaults(func=run)


def _add_compile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        dest="compile_mode",
        choices=["off", "on", "both"],
        help="torch.compile (default: both on CUDA, off on CPU)",
    )
    parser.add_argument(
        "--compile-scope", choices=list(COMPILE_SCOPES), default="auto",
        help="what the compiled contestants compile: the whole model as one graph, or each block on its own (the "
        "one way compiled training keeps activation checkpointing's saving); auto: blocks with "
        "--checkpoint-activations, else model",
    )


def run(args: argparse.Namespace) -> int:
    if args.grad_checkpointing and args.checkpoint_activations:
        raise ValueError("--grad-checkpointing compares training with and without checkpointing; "
                         "--checkpoint-activations does not apply to it.")
    cfg = _config(args)
    out = Path(args.output)
    json_path, png_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".png")
    _check_writable(json_path, *([] if args.grad_checkpointing else [png_path]))  # before measuring: nothing lost
    measure = run_checkpointing_bench if args.grad_checkpointing else run_bench
    results = measure(cfg, log=lambda line: print(line, file=sys.stderr))  # progress on stderr, tables on stdout
    results["command"] = "weightformer " + " ".join(sys.argv[1:]) if sys.argv else "weightformer bench"
    print(format_checkpointing_results(results) if args.grad_checkpointing else format_results(results))
    json_path.write_text(json.dumps(results, indent=2))
    if args.grad_checkpointing:
        print(f"\nwrote {json_path}")
        return 0
    plot_results(results, str(png_path))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def _config(args: argparse.Namespace) -> BenchConfig:
    """The bench's settings from the command line, with the defaults of the device and the task."""
    device = resolve_device(args.device).type
    on_cuda = device == "cuda"
    generation = args.task == "generation"
    variants = _DIT_VARIANTS if generation else _VARIANTS
    name = args.model or ("small" if generation else "tiny")
    if name not in variants:
        raise ValueError(f"--model {name} is not a {args.task} variant; choose from {', '.join(sorted(variants))}.")
    if generation:  # DiT's working point, 32 latents per process; a CPU takes ~10 s per S/2 step at latent 32
        resolutions, base_batch = ([32, 64, 128] if on_cuda else [32]), 32
    else:
        resolutions = [224, 448, 672, 896, 1248, 1536] if on_cuda else [224, 448, 896]
        base_batch = 256 if on_cuda else 16
    rounds = 20 if on_cuda else (3 if args.grad_checkpointing or generation else 10)
    return BenchConfig(
        model=variants[name],
        task=args.task,
        num_classes=1000,
        resolutions=args.resolutions or resolutions,
        base_batch=args.base_batch or base_batch,
        modes=tuple(args.modes),
        compile_mode=args.compile_mode or ("both" if on_cuda else "off"),
        include_reference=not args.no_reference,
        baseline_onednn=args.baseline_onednn,
        rounds=args.rounds or rounds,
        warmup=args.warmup,
        device=device,
        threads=args.threads,
        reuse_cpu_memory=not args.system_malloc,
        checkpoint_activations=args.checkpoint_activations,
        compile_scope=args.compile_scope,
    )


def _check_writable(*paths: Path) -> None:
    """Raise a one-line ValueError unless every path's folder exists or can be made, and can be written to."""
    for path in paths:
        parent = path.parent
        existing = next(p for p in (parent, *parent.parents) if p.exists())
        if not existing.is_dir():
            raise ValueError(f"--output {path.with_suffix('')}: {existing} is a file, not a folder.")
        if path.is_dir():
            raise ValueError(f"--output {path.with_suffix('')}: {path} is a folder.")
        parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent, os.W_OK):
            raise ValueError(f"--output {path.with_suffix('')}: cannot write to {parent}.")
