"""`weightformer profile`: where the time goes, per op family, WeightFormer against the DeiT of the same width
(or WeightFormer-DiT against the attention DiT, `--task generation`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..analysis.profile import ProfileConfig, format_profile, run_profile
from .bench import _DIT_VARIANTS, _VARIANTS
from .options import add_output, add_system_malloc


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="torch.profiler time, MACs and GMAC/s per op family, WeightFormer vs DeiT (CPU, fp32)",
        description=(
            "Profiles training and inference steps of WeightFormer (fast path, eager) and the DeiT of the same "
            "width on the same batch, alternating the two, and prints per op family (GEMMs, depthwise convs, "
            "norms, dynamic predictors, attention, elementwise, ...) the self time, MACs and GMAC/s; writes JSON. "
            "--task generation: WeightFormer-DiT against the attention DiT of the same size on latents."
        ),
    )
    parser.add_argument(
        "--task", default="classification", choices=["classification", "generation"],
        help="generation: WeightFormer-DiT/2 against the attention DiT/2 on latents (guided sampling step and "
        "diffusion training step)",
    )
    parser.add_argument("--model", choices=sorted({*_VARIANTS, *_DIT_VARIANTS}),
                        help="variant (default tiny; generation: small)")
    parser.add_argument("--resolution", type=int, help="input side (default 224; generation: latent side, 32)")
    parser.add_argument("--batch", type=int, help="batch size (default 16, the bench's at 224; generation: 32)")
    parser.add_argument("--modes", nargs="+", choices=["inference", "train"], default=["inference", "train"])
    parser.add_argument("--steps", type=int, default=2, help="profiled steps per model and mode (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps per model first (default 1)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    add_system_malloc(parser)
    add_output(parser, "writes PATH.json", default="profile", metavar="PREFIX")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    generation = args.task == "generation"
    variants = _DIT_VARIANTS if generation else _VARIANTS
    name = args.model or ("small" if generation else "tiny")
    if name not in variants:
        raise ValueError(f"--model {name} is not a {args.task} variant; choose from {', '.join(sorted(variants))}.")
    batch = args.batch if args.batch is not None else (32 if generation else 16)
    resolution = args.resolution if args.resolution is not None else (32 if generation else 224)
    if args.steps < 1 or args.warmup < 0 or batch < 1:
        raise ValueError("--steps and --batch must be at least 1 and --warmup at least 0.")
    cfg = ProfileConfig(model=variants[name], task=args.task, resolution=resolution, batch=batch,
                        modes=tuple(args.modes), steps=args.steps, warmup=args.warmup, threads=args.threads,
                        reuse_cpu_memory=not args.system_malloc)
    path = Path(args.output).with_name(Path(args.output).name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    results = run_profile(cfg, log=lambda line: print(line, file=sys.stderr))
    results["command"] = "weightformer " + " ".join(sys.argv[1:]) if sys.argv else "weightformer profile"
    print(format_profile(results))
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    return 0
