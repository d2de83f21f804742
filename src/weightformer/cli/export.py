"""`weightformer export NAME`: a model (random or from a checkpoint) to ONNX, TorchScript or torch.export."""

from __future__ import annotations

import argparse

from ..models import create_model
from ..models.export import EXPORT_FORMATS, default_export_path, export_model
from .options import add_ema, add_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a torch.export program (dynamic batch, height, width)",
        description="Export a WeightFormer with dynamic batch size, height and width (any multiple of the patch "
        "size, at least 3 tokens a side). With --checkpoint, its weights (the release's .pth or .safetensors, or "
        "a classification training checkpoint of ours, its EMA weights by default; the class count is read from "
        "the checkpoint).",
    )
    parser.add_argument("name", metavar="NAME", help="model name, e.g. weightformer_tiny")
    parser.add_argument("--checkpoint", default=None, help="weights to export (default: random initialisation)")
    add_ema(parser)
    parser.add_argument("--format", dest="fmt", default="onnx", metavar="FORMAT",
                        help=" | ".join(EXPORT_FORMATS) + " (default onnx)")
    add_output(parser, "output file (default: NAME.onnx, NAME.pt for TorchScript, NAME.pt2 for torch.export)",
               metavar="FILE")
    parser.add_argument("--img-size", type=int, nargs="+", metavar=("H", "W"),
                        help="example input size traced for onnx / exported-program (default: the model's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown --format {args.fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    size = None
    if args.img_size is not None:
        if len(args.img_size) not in (1, 2):
            raise ValueError(f"--img-size takes H or H W, got {len(args.img_size)} numbers.")
        size = (args.img_size[0], args.img_size[-1])
    if args.checkpoint is None:
        model = create_model(args.name)
    else:
        from ..tasks.classification import load_classifier

        model, _ = load_classifier(args.checkpoint, args.name, ema=args.ema)
    path = export_model(model, args.output or default_export_path(args.name, args.fmt), args.fmt, size)
    print(f"Exported {args.name} ({args.fmt}, dynamic batch, height and width) to {path}")
    return 0
