"""`weightformer probe`: long-range probes, every model on every task with the same budget; table, JSON, plot.

The probe task has no verbs: the command is the suite (`COMMAND`), which trains one probe run per model, task,
seed and knob setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...cli.options import Verb, add_device, add_output
from .data import PROBE_TASKS
from .models import DEFAULT_SIZES
from .suite import DEFAULT_MODELS, SuiteConfig, format_table, plot_suite, run_suite

_DESCRIPTION = (
    "Trains each model on each generated long-range task (labels decided only by relating two distant "
    "parts of the image; a model that cannot relate them is capped at 75 %%) with the same step budget "
    "and seeds, on the training engine. Prints a Markdown table (accuracy, training images/s, peak "
    "memory), writes DIR/probes.json and DIR/probes.png (accuracy against distance and resolution). "
    "Model specs: static, weightformer[:linear=NAME,conv=NAME,dynamic=sparse|all|1-4,width=,depth=,patch=], "
    "vit[:heads=,width=,depth=,patch=], or any timm/WeightFormer model name[:kwarg=value,...]."
)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=["same_different"], choices=sorted(PROBE_TASKS),
                        help="probe tasks (default same_different)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="SPEC",
                        help=f"model specs (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default 0)")
    parser.add_argument("--resolution", nargs="+", type=int, default=[32], help="image sides in px (default 32)")
    parser.add_argument("--distance", nargs="+", type=float, default=[1.0],
                        help="gap between the two parts as a fraction of the largest that fits (default 1)")
    parser.add_argument("--size", type=float, default=1 / 8, help="object side over image side (default 1/8)")
    parser.add_argument("--distractors", type=int, default=0, help="uninformative grey objects (default 0)")
    parser.add_argument("--colours", type=int, default=2, help="same_different's palette size, 2-6 (default 2)")
    parser.add_argument("--item-size", type=int, default=4, help="psvrt's bit-pattern side in px (default 4)")
    parser.add_argument("--contour-length", type=int, default=6,
                        help="pathfinder's paddles per contour: 6, 9, 14 are LRA's easy/intermediate/hard (default 6)")
    parser.add_argument("--width", type=int, default=DEFAULT_SIZES["width"], help="default width of the specs")
    parser.add_argument("--depth", type=int, default=DEFAULT_SIZES["depth"], help="default depth of the specs")
    parser.add_argument("--patch", type=int, default=DEFAULT_SIZES["patch"], help="default patch size of the specs")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per run (default 1500)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    parser.add_argument("--val-images", type=int, default=512, help="validation images per task (default 512)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each in a fresh process (default 1; 0: all in this process)")
    add_device(parser, default="cpu")  # the recorded comparisons (benchmarks/PROBES.md) are CPU runs
    add_output(parser, "output folder", default="probes", metavar="DIR")
    parser.add_argument("--resume", action="store_true", help="skip the runs DIR/probes.json already holds")


def run(args: argparse.Namespace) -> int:
    from ...engine.distributed import resolve_device

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file, not a folder.")
    cfg = SuiteConfig(
        tasks=args.tasks, models=args.models, seeds=args.seeds, resolutions=args.resolution,
        distances=args.distance, size=args.size, distractors=args.distractors, colours=args.colours,
        item_size=args.item_size, contour_length=args.contour_length,
        sizes=dict(width=args.width, depth=args.depth, patch=args.patch), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, val_images=args.val_images, threads=args.threads, jobs=args.jobs,
        device=str(resolve_device(args.device)), out=str(out), resume=args.resume,
    )
    results = run_suite(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    command = "weightformer " + " ".join(sys.argv[1:]) if sys.argv[1:] else "weightformer probe"
    # The 75 % bound holds where the two parts never share a window: the fixed-distance tasks (see data.py).
    ceiling = "" if set(args.tasks) & {"psvrt", "pathfinder", "same_different_random"} else ", local-model ceiling 75 %"
    print(f"{command}\n\nstatic receptive field: {results['static_receptive_field_px']} px; chance 50 %{ceiling}\n")
    print(format_table(results))
    plot_suite(results, out / "probes.png")
    print(f"\nwrote {out / 'probes.json'} and {out / 'probes.png'}")
    return 0


COMMAND = Verb("long-range probes: generated tasks only a relation between distant regions solves", _arguments, run,
               description=_DESCRIPTION)
