"""`weightformer train`: train with a recipe from configs/, any value overridable (`--epochs 5`)."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from weightformer.tasks.classification import add_config_arguments

    parser = subparsers.add_parser(
        "train",
        help="train a WeightFormer (default: the embedded synthetic dataset, on CPU in minutes)",
        description="Train a WeightFormer with a recipe (configs/*.yaml). With no arguments: a small model on the "
        "built-in synthetic dataset. Data parallel: torchrun --nproc_per_node=N -m weightformer train .... "
        "SIGTERM or SIGUSR1 write a checkpoint and end the run (exit 0); --resume auto continues it.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightformer.tasks.classification import config_from_args, train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") != "0":
        return 0
    if result["preempted"]:
        print(f"Preempted at step {result['step']}: run {result['run_dir']}; continue with --resume auto.")
    elif "val_top1" in result:
        print(f"Done: val top-1 {result['val_top1']:.2f} %, best {result['best_top1']:.2f} %, run {result['run_dir']}")
    return 0
