"""`weightformer erf MODEL...`: effective receptive fields (the paper's Fig. 3) as a PNG grid and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.erf import compute_erfs, embedded_images, load_images, parse_model_spec, plot_erfs, write_json
from ..analysis.summary import format_table
from ..engine.distributed import resolve_device
from .options import add_device, add_output

DEFAULT_MODELS = ["weightformer_tiny", "weightformer_tiny:dynamic_blocks=none", "deit_tiny_patch16_224",
                  "convnext_tiny"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "erf",
        help="effective receptive fields of models (gradient of the central output token), PNG grid + JSON",
        description="Effective receptive field: |d ReLU(central output token) / d input|, summed over colour "
        "channels and images, log-scaled. Reports the share of the image area holding 20 / 50 / 99 %% of the "
        "total contribution. Random weights unless a model is given as NAME@CHECKPOINT.",
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", default=DEFAULT_MODELS,
        help="timm model names, optionally NAME:key=value,...@CHECKPOINT (default: "
        + " ".join(DEFAULT_MODELS) + ")",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[448], help="square input sizes (default 448)")
    parser.add_argument("--images", default=None, help="folder of images (default: the embedded dataset's)")
    parser.add_argument("--num-images", type=int, default=8, help="images to aggregate over (default 8)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and embedded images")
    add_output(parser, "output prefix: writes PREFIX.png and PREFIX.json", default="erf", metavar="PREFIX")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    specs = [parse_model_spec(m) for m in args.models]
    if args.num_images < 1:
        raise ValueError("--num-images must be at least 1.")
    for size in args.sizes:
        if size < 64:
            raise ValueError(f"--sizes: {size} is too small; use 64 pixels or more.")
    if args.images is None:
        images = embedded_images(args.num_images, max(args.sizes), args.seed)
    else:
        images = load_images(args.images, args.num_images)
    results = compute_erfs(specs, args.sizes, images, args.seed, args.batch_size, resolve_device(args.device))
    output = Path(args.output)
    plot_erfs(results, output.with_suffix(".png"))
    write_json(results, output.with_suffix(".json"), len(images))
    rows = [[r.label, f"{r.size}x{r.size}", *(f"{100 * r.area_fraction[k]:.1f}" for k in ("0.2", "0.5", "0.99")),
             f"{100 * r.zero_fraction:.1f}"] for r in results]
    print(format_table(["model", "input", "20 % (area %)", "50 % (area %)", "99 % (area %)", "zero (area %)"], rows))
    print(f"Wrote {output.with_suffix('.png')} and {output.with_suffix('.json')} ({len(images)} images).")
    return 0
