"""`weightformer segment eval|predict`: semantic segmentation checkpoints; `train` is every task's (cli/tasks.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ...cli.options import Verb, add_device, add_ema, add_json, add_output


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by weightformer segment train")
    parser.add_argument("--data-dir", required=True, help="ADE20K layout: images/<split>/, annotations/<split>/")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--inference", choices=["whole", "slide"], default=None)
    add_ema(parser)
    add_device(parser)
    add_json(parser, "the metrics")


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, args.inference, args.device, args.ema)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{metrics['images']} images: mIoU {metrics['miou']:.2f} %, mAcc {metrics['macc']:.2f} %, "
              f"aAcc {metrics['aacc']:.2f} %")
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True)
    add_output(parser, "folder for the PNGs", default="segmentations", metavar="DIR")
    parser.add_argument("--inference", choices=["whole", "slide"], default=None)
    add_ema(parser)
    add_device(parser)


def run_predict(args: argparse.Namespace) -> int:
    from .evaluate import predict_images

    for path, fractions in predict_images(args.checkpoint, args.images, args.output, args.inference, args.device,
                                          args.ema):
        shares = ", ".join(f"{name} {100 * f:.1f} %" for name, f in fractions.items())
        print(f"{path}: {shares}")
    return 0


def summarise(result: dict[str, Any]) -> list[str]:
    if "val_miou" not in result:
        return []
    return [f"Done: val mIoU {result['val_miou']:.2f} %, aAcc {result['val_aacc']:.2f} %, run {result['run_dir']}"]


VERBS = {
    "eval": Verb("mIoU / mAcc / aAcc of a segmentation checkpoint on a dataset", _eval_arguments, run_eval),
    "predict": Verb("segment images; writes image + overlay PNGs", _predict_arguments, run_predict),
}
