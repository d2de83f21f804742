"""`weightformer detect eval|predict`: Mask R-CNN checkpoints; `train` is every task's (cli/tasks.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ...cli.options import Verb, add_device, add_ema, add_json, add_output


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by weightformer detect train")
    parser.add_argument("--data-dir", required=True,
                        help="COCO layout: annotations/instances_<split>.json and <split>/ images")
    parser.add_argument("--split", default="val2017")
    add_ema(parser)
    add_device(parser)
    add_json(parser, "the metrics")


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_metrics

    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, args.device, ema=args.ema)
    if args.json:
        print(json.dumps(metrics))
        return 0
    if metrics["left_out"]:
        print(f"Left out: {metrics['left_out']}")
    print(f"{metrics['images']} images, {metrics['detections']} detections (COCOeval, AP in %):")
    print(format_metrics(metrics))
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True)
    add_output(parser, "folder for the PNGs", default="detections", metavar="DIR")
    parser.add_argument("--threshold", type=float, default=0.5, help="least score drawn (default: 0.5)")
    add_ema(parser)
    add_device(parser)


def run_predict(args: argparse.Namespace) -> int:
    from .evaluate import predict_images

    for path, found in predict_images(args.checkpoint, args.images, args.output, args.threshold, args.device,
                                      args.ema):
        listed = ", ".join(f"{name} {score:.2f}" for name, score, _ in found) or "nothing found"
        print(f"{path}: {listed}")
    return 0


def summarise(result: dict[str, Any]) -> list[str]:
    from .evaluate import format_metrics

    if "val_bbox_ap" not in result:
        return []
    return [format_metrics(result, prefix="val_"),
            f"Done: val box AP {result['val_bbox_ap']:.1f}, AP50 {result['val_bbox_ap50']:.1f}; mask AP "
            f"{result['val_segm_ap']:.1f}, AP50 {result['val_segm_ap50']:.1f}; run {result['run_dir']}"]


VERBS = {
    "eval": Verb("COCO box and mask AP of a detection checkpoint on a dataset", _eval_arguments, run_eval),
    "predict": Verb("detect objects in images; writes PNGs with boxes and masks", _predict_arguments, run_predict),
}
