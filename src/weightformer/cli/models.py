"""`weightformer models` and `weightformer summary`."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    pass
