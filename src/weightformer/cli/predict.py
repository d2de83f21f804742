"""`weightformer predict IMAGE...`: the top-5 classes of each image."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="top-5 classes of images with a checkpoint")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", default=None, help="model name, for checkpoints that do not say (the release's)")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="take class names from <data-dir>/val/<class>")
    parser.add_argument("--top-k", type=int, default=5)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightformer.tasks.classification import predict

    results = predict(args.checkpoint, args.images, args.model, args.img_size, args.data_dir, args.top_k)
    for path, top in zip(args.images, results, strict=True):
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f} %  {name}")
    return 0
