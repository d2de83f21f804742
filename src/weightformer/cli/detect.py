"""`weightformer detect train|eval|predict`: detection and instance segmentation (Mask R-CNN on WeightFormer)."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from weightformer.tasks.detection import add_config_arguments

    parser = subparsers.add_parser("detect", help="detection and instance segmentation: train, evaluate or apply "
                                                  "Mask R-CNN on WeightFormer")
    commands = parser.add_subparsers(dest="detect_command", metavar="SUBCOMMAND", required=True)
    train = commands.add_parser(
        "train", help="train (default: the embedded shapes dataset on the CPU)",
        description="Train Mask R-CNN on a WeightFormer (or DeiT) feature pyramid, with a recipe from "
        "configs/detection/ (coco-1x, coco-3x, coco-lsj, synthetic). Data parallel: torchrun ... -m weightformer "
        "detect train.",
    )
    add_config_arguments(train)
    train.set_defaults(func=run_train)
    evaluate = commands.add_parser("eval", help="COCO box and mask AP of a detection checkpoint on a dataset")
    evaluate.add_argument("checkpoint", help="a checkpoint written by weightformer detect train")
    evaluate.add_argument("--data-dir", required=True,
                          help="COCO layout: annotations/instances_<split>.json and <split>/ images")
    evaluate.add_argument("--split", default="val2017")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=run_eval)
    predict = commands.add_parser("predict", help="detect objects in images; writes PNGs with boxes and masks")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--out", default="detections", help="folder for the PNGs (default: detections)")
    predict.add_argument("--threshold", type=float, default=0.5, help="least score drawn (default: 0.5)")
    predict.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    predict.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from weightformer.tasks.detection import config_from_args, format_metrics, train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0" and "val_bbox_ap" in result:
        print(format_metrics(result, prefix="val_"))
        print(f"Done: val box AP {result['val_bbox_ap']:.1f}, AP50 {result['val_bbox_ap50']:.1f}; mask AP "
              f"{result['val_segm_ap']:.1f}, AP50 {result['val_segm_ap50']:.1f}; run {result['run_dir']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from weightformer.tasks.detection import format_metrics
    from weightformer.tasks.detection.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, args.device)
    if args.json:
        print(json.dumps(metrics))
        return 0
    if metrics["left_out"]:
        print(f"Left out: {metrics['left_out']}")
    print(f"{metrics['images']} images, {metrics['detections']} detections (COCOeval, AP in %):")
    print(format_metrics(metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from weightformer.tasks.detection.evaluate import predict_images

    for path, found in predict_images(args.checkpoint, args.images, args.out, args.threshold, args.device):
        listed = ", ".join(f"{name} {score:.2f}" for name, score, _ in found) or "nothing found"
        print(f"{path}: {listed}")
    return 0
