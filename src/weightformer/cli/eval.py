"""`weightformer eval`: top-1 / top-5 and throughput of a checkpoint on a folder dataset."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="top-1 / top-5 and throughput of a checkpoint on <data-dir>/<split>/<class>/*",
        description="Evaluate a checkpoint (ours, or the release's with --model) with the release's evaluation "
        "transform (resize to size/crop_pct, centre crop, bicubic).",
    )
    parser.add_argument("checkpoint", help="a training checkpoint (.pth), the release's .pth or a .safetensors")
    parser.add_argument("--data-dir", required=True, help="dataset folder holding <split>/<class>/<image>")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", default=None, help="model name, for checkpoints that do not say (the release's)")
    parser.add_argument("--img-size", type=int, default=None, help="evaluation resolution (default: trained one)")
    parser.add_argument("--crop-pct", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data-loading processes (default: 4, or fewer on a machine with fewer cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightformer.tasks.classification import evaluate_folder

    metrics = evaluate_folder(args.checkpoint, args.data_dir, args.split, args.model, args.img_size,
                              args.batch_size, args.workers, args.device, args.crop_pct)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{metrics['model']} at {metrics['img_size']}px on {metrics['images']} images: "
              f"top-1 {metrics['top1']:.2f} %, top-5 {metrics['top5']:.2f} %, loss {metrics['loss']:.4f}, "
              f"{metrics['images_per_second']:.1f} images/s")
    return 0
