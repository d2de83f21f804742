"""The flags that mean the same in every command, each defined once, and `Verb`, one `COMMAND VERB` of a task.

    --device auto|cpu|cuda   where a command runs its model (auto: CUDA when PyTorch sees it)
    --ema / --no-ema         a training checkpoint's EMA weights (the default, when the run kept them) or not
    --json                   print the result as JSON instead of text (always a flag; files go to -o)
    -o, --output PATH        where a command writes (a file, a folder or a prefix, said by each command)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.distributed import DEVICES

__all__ = ["Verb", "add_device", "add_ema", "add_json", "add_output"]


@dataclass(frozen=True)
class Verb:
    """One verb of a task's command (`weightformer detect eval`): its help, its arguments, what it runs."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]  # adds the verb's arguments to its parser
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, choices=DEVICES,
                        help=f"where the model runs; auto: CUDA when available (default: {default})")


def add_system_malloc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--system-malloc", action="store_true",
        help="CPU: leave the C library's malloc at its defaults; by default freed memory stays in the process "
        "for reuse (weightformer.kernels.reuse_freed_cpu_memory), so large activations are not page-faulted in "
        "afresh every step",
    )


def add_ema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                        help="a training checkpoint's EMA weights, when the run kept them (default); --no-ema: the "
                        "trained weights")


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON object instead of text")


def add_output(parser: argparse.ArgumentParser, help: str, default: str | None = None, required: bool = False,
               metavar: str = "PATH") -> None:
    """`-o/--output` (`--out` is kept as an older spelling)."""
    parser.add_argument("-o", "--output", "--out", dest="output", default=default, required=required,
                        metavar=metavar, help=help + ("" if default is None else f" (default: {default})"))
