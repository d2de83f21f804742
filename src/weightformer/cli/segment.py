"""`weightformer segment train|eval|predict`: semantic segmentation (UperNet on WeightFormer or DeiT) on the engine."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from weightformer.tasks.segmentation import add_config_arguments

    parser = subparsers.add_parser("segment",
                                   help="semantic segmentation: train, evaluate or apply UperNet on WeightFormer")
    commands = parser.add_subparsers(dest="segment_command", metavar="SUBCOMMAND", required=True)
    train = commands.add_parser(
        "train", help="train (default: the embedded shapes dataset on the CPU)",
        description="Train UperNet on a WeightFormer (or DeiT) feature pyramid, with a recipe from "
        "configs/segmentation/ (ade20k-small, synthetic). Data parallel: torchrun ... -m weightformer segment train.",
    )
    add_config_arguments(train)
    train.set_defaults(func=run_train)
    evaluate = commands.add_parser("eval", help="mIoU / mAcc / aAcc of a segmentation checkpoint on a dataset")
    evaluate.add_argument("checkpoint", help="a checkpoint written by weightformer segment train")
    evaluate.add_argument("--data-dir", required=True, help="ADE20K layout: images/<split>/, annotations/<split>/")
    evaluate.add_argument("--split", default="validation")
    evaluate.add_argument("--inference", choices=["whole", "slide"], default=None)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=run_eval)
    predict = commands.add_parser("predict", help="segment images; writes image + overlay PNGs")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--out", default="segmentations", help="folder for the PNGs (default: segmentations)")
    predict.add_argument("--inference", choices=["whole", "slide"], default=None)
    predict.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from weightformer.tasks.segmentation import config_from_args, train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0" and "val_miou" in result:
        print(f"Done: val mIoU {result['val_miou']:.2f} %, aAcc {result['val_aacc']:.2f} %, run {result['run_dir']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from weightformer.tasks.segmentation.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, args.inference)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{metrics['images']} images: mIoU {metrics['miou']:.2f} %, mAcc {metrics['macc']:.2f} %, "
              f"aAcc {metrics['aacc']:.2f} %")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from weightformer.tasks.segmentation.evaluate import predict_images

    for path, fractions in predict_images(args.checkpoint, args.images, args.out, args.inference):
        shares = ", ".join(f"{name} {100 * f:.1f} %" for name, f in fractions.items())
        print(f"{path}: {shares}")
    return 0
