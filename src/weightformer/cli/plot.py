"""`weightformer plot RUN_DIR`: loss and accuracy curves to PNG."""

from __future__ import annotations

import argparse

from .options import add_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="draw a run's loss and accuracy curves to PNG")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (holding metrics.jsonl)")
    add_output(parser, "PNG path (default: RUN_DIR/curves.png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightformer.engine.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0
