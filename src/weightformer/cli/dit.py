"""`weightformer dit train`: class-conditional WeightFormer-DiT on the training engine (pixel space)."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from weightformer.tasks.generation import add_config_arguments

    parser = subparsers.add_parser("dit", help="WeightFormer-DiT: class-conditional generation")
    commands = parser.add_subparsers(dest="dit_command", metavar="SUBCOMMAND", required=True)
    train = commands.add_parser(
        "train", help="train on an image folder or the embedded shapes (pixel space), then write a sample grid",
        description="Train WeightFormer-DiT with DiT's hybrid diffusion loss on the engine (recipes in "
        "configs/generation/). Data parallel: torchrun ... -m weightformer dit train.",
    )
    add_config_arguments(train)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from weightformer.tasks.generation import config_from_args, train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0" and "val_loss" in result:
        print(f"Done: val loss {result['val_loss']:.4f} (mse {result['val_mse']:.4f}), run {result['run_dir']}")
    return 0
