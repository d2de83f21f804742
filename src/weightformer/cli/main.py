"""`weightformer` command: the tasks' commands come from the task registry, the tools' from their modules."""
from __future__ import annotations

import argparse
import importlib
import sys

from .tasks import add_task_commands

# Tool modules under weightformer.cli (commands that are not tasks); each defines add_parser(subparsers) -> None,
# registering a parser whose `func(args) -> int | None` runs the command.
TOOL_MODULES = ["models", "plot", "bench", "profile", "export", "export_weights", "erf", "data"]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command (the full usage is one --help away).

    No abbreviated flags: `--epoch 3` must not quietly set `epochs`, nor `--lr` one day mean another key.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="weightformer",
        description="WeightFormer: linear-time global visual modeling without explicit attention.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_task_commands(subparsers)
    for name in TOOL_MODULES:
        importlib.import_module(f"weightformer.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # The command as typed: `weightformer detect eval`. Every task command keeps its verb in `verb`.
    prog = " ".join(["weightformer", *filter(None, [args.command, getattr(args, "verb", None)])])
    if unknown:  # said by the subcommand, which is where the flag was meant to go
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see {prog} --help)\n")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (ValueError, OSError, ModuleNotFoundError) as error:  # bad input or a missing extra: one line
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    text = str(error) if not isinstance(error, OSError) or not error.filename else \
        f"{error.filename}: {error.strerror or error}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
