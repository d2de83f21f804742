"""`weightformer classify eval|predict` (also `weightformer eval|predict`); `train` is every task's (cli/tasks.py)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ...cli.options import Verb, add_device, add_ema, add_json


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model name, for weights files that do not say (the release's .pth / .safetensors)")
    add_ema(parser)
    add_device(parser)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a training checkpoint (.pth), the release's .pth or a .safetensors")
    parser.add_argument("--data-dir", required=True, help="dataset folder holding <split>/<class>/<image>, or "
                        "wds:DIR (data pack shards), hf:DIR, hf-stream:DIR (a local Hugging Face dataset)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--img-size", type=int, default=None, help="evaluation resolution (default: trained one)")
    parser.add_argument("--crop-pct", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data-loading processes (default: 4, or fewer on a machine with fewer cores)")
    _model_arguments(parser)
    add_json(parser, "the metrics")


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder

    metrics = evaluate_folder(args.checkpoint, args.data_dir, args.split, args.model, args.img_size,
                              args.batch_size, args.workers, args.device, args.crop_pct, ema=args.ema)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{metrics['model']} at {metrics['img_size']}px on {metrics['images']} images: "
              f"top-1 {metrics['top1']:.2f} %, top-5 {metrics['top5']:.2f} %, loss {metrics['loss']:.4f}, "
              f"{metrics['images_per_second']:.1f} images/s")
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="take class names from <data-dir>/val/<class> (or from "
                        "a wds:, hf: or hf-stream: source's val split)")
    parser.add_argument("--top-k", type=int, default=5)
    _model_arguments(parser)


def run_predict(args: argparse.Namespace) -> int:
    from .evaluate import predict

    results = predict(args.checkpoint, args.images, args.model, args.img_size, args.data_dir, args.top_k,
                      ema=args.ema, device=args.device)
    for path, top in zip(args.images, results, strict=True):
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f} %  {name}")
    return 0


def summarise(result: dict[str, Any]) -> list[str]:
    if "val_top1" not in result:
        return []
    return [f"Done: val top-1 {result['val_top1']:.2f} %, best {result['best_top1']:.2f} %, run {result['run_dir']}"]


VERBS = {
    "eval": Verb(
        "top-1 / top-5 and throughput of a checkpoint on <data-dir>/<split>/<class>/*", _eval_arguments, run_eval,
        description="Evaluate a checkpoint (ours, or the release's with --model) with the release's evaluation "
        "transform (resize to size/crop_pct, centre crop, bicubic)."),
    "predict": Verb("top-k classes of images with a checkpoint", _predict_arguments, run_predict),
}
