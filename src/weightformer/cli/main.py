"""`weightformer` command: each subcommand lives in its own module with `add_parser(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules under weightformer.cli; each defines add_parser(subparsers) -> None, registering a
# parser whose `func(args) -> int | None` runs the command.
SUBCOMMAND_MODULES = ["models", "train", "eval", "predict", "plot", "bench", "export", "erf"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightformer",
        description="WeightFormer: linear-time global visual modeling without explicit attention.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"weightformer.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"weightformer {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
