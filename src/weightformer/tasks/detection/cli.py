"""`weightformer detect eval|predict`: Mask R-CNN checkpoints; `train` is every task's (cli/tasks.py)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ...cli.options import Verb, add_device, add_ema, add_json, add_output


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by weightformer detect train")
    parser.add_argument("--data-dir", required=True,
                        help="COCO layout: annotations/instances_<split>.json and <split>/ images")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--batch-size", type=_at_least(1), default=8,
                        help="images per forward pass (default: 8; the model pads a batch to its largest image)")
    workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    parser.add_argument("--workers", type=_at_least(0), default=workers,
                        help=f"processes reading images (default: {workers}, up to 4 of this machine's cores)")
    add_ema(parser)
    add_device(parser)
    add_json(parser, "the metrics")


def _at_least(low: int):
    """An argparse type: an integer >= low (argparse turns the ValueError into its one-line error)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse's message calls the type
    return parse


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_metrics

    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, args.device, args.batch_size,
                                  args.workers, ema=args.ema)
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
    masks = (f"; mask AP {result['val_segm_ap']:.1f}, AP50 {result['val_segm_ap50']:.1f}"
             if "val_segm_ap" in result else "")  # (box-only runs have no mask metrics)
    return [format_metrics(result, prefix="val_"),
            f"Done: val box AP {result['val_bbox_ap']:.1f}, AP50 {result['val_bbox_ap50']:.1f}{masks}; run "
            f"{result['run_dir']}"]


VERBS = {
    "eval": Verb("COCO box and mask AP of a detection checkpoint on a dataset (box AP alone without masks)",
                 _eval_arguments, run_eval),
    "predict": Verb("detect objects in images; writes PNGs with boxes and masks (boxes alone from a box-only "
                    "model)", _predict_arguments, run_predict),
}
