"""`weightformer dit extract|sample|fid`: VAE latents, samples of a WeightFormer-DiT checkpoint and their scores;
`train` is every task's (cli/tasks.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ...cli.options import Verb, add_device, add_ema, add_json, add_output


def _extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR")
    add_output(parser, "folder for the latents", required=True, metavar="DIR")
    parser.add_argument("--vae", default="ema", help="ema, mse (sd-vae-ft-*), a Hub repo id or a local folder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--batch-size", type=int, default=32)
    add_device(parser)


def run_extract(args: argparse.Namespace) -> int:
    from ...engine.distributed import resolve_device
    from .latents import extract_latents

    meta = extract_latents(args.data_dir, args.output, args.vae, args.image_size, tuple(args.splits),
                           args.batch_size, resolve_device(args.device))
    counts = ", ".join(f"{split} {c['images']} ({c['skipped']} unreadable skipped)" for split, c in
                       meta["counts"].items())
    side = args.image_size // meta["factor"]
    print(f"Latents {meta['latent_channels']}x{side}x{side} (and mirrored) of {counts} in {args.output}")
    return 0


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    add_output(parser, "folder for samples.npz and samples.png", required=True, metavar="DIR")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm++"], default="ddpm")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="classifier-free guidance (1: none)")
    parser.add_argument("--guided-channels", type=_channels, default=3, metavar="N|all",
                        help="channels guidance mixes: 3, the first 3 of 4 latent ones as DiT's release (default), "
                        "or all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="class ids, in turn (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    add_ema(parser)
    add_device(parser)


def _channels(text: str) -> int | str:
    """--guided-channels: a number, or "all"."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of channels or all, got {text!r}") from None


def run_sample(args: argparse.Namespace) -> int:
    from .sample import sample_to_files

    result = sample_to_files(args.checkpoint, args.output, args.num_samples, args.scheduler, args.steps,
                             args.cfg_scale, args.seed, args.classes, args.batch_size, args.device, ema=args.ema,
                             guided=args.guided_channels)
    if result:
        print(f"{result['images']} samples in {result['seconds']:.1f} s: {result['npz']} (arr_0 uint8 NHWC, "
              f"arr_1 labels), grid {result['png']}")
    return 0


def _fid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", metavar="SAMPLES")
    parser.add_argument("reference", metavar="REFERENCE")
    parser.add_argument("--classifier", default=None, metavar="CKPT", help="score with this classifier's features")
    parser.add_argument("--splits", type=int, default=10, help="IS splits")
    add_ema(parser)
    add_device(parser)
    add_json(parser, "the scores")
    add_output(parser, "also write the scores to this JSON file", metavar="FILE")


def run_fid(args: argparse.Namespace) -> int:
    import numpy as np

    from ...engine.distributed import resolve_device
    from .metrics import classifier_scorer, inception_scorer, load_images, score

    device = resolve_device(args.device)
    scorer = classifier_scorer(args.classifier, device, ema=args.ema) if args.classifier else \
        inception_scorer(device)
    samples, reference = load_images(args.samples), load_images(args.reference)
    labels = None
    if args.classifier and args.samples.endswith(".npz"):
        with np.load(args.samples) as npz:
            labels = npz["arr_1"] if "arr_1" in npz.files else None
    result = score(samples, reference, scorer, labels, args.splits)
    result["space"] = f"classifier {args.classifier}" if args.classifier else "Inception-v3"
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result))
        return 0
    line = f"FID {result['fid']:.3f}, IS {result['is']:.3f} +- {result['is_std']:.3f}"
    if "accuracy" in result:
        line += f", {result['accuracy']:.1f} % classified as their conditioning class"
    print(f"{line} ({result['samples']} samples vs {result['reference']} reference images, {result['space']} "
          "features)")
    return 0


def summarise(result: dict[str, Any]) -> list[str]:
    if "val_loss" not in result:
        return []
    lines = [f"Done: val loss {result['val_loss']:.4f} (mse {result['val_mse']:.4f}), run {result['run_dir']}"]
    if "judge" in result:
        j = result["judge"]
        lines.append(f"Judged by a classifier trained on the real images, {j['samples']} guided samples: "
                     f"{j['accuracy']:.1f} % classified as their class (untrained model {j['untrained_accuracy']:.1f}"
                     f" %); classifier-feature FID {j['fid']:.3f} (real-vs-real floor {j['fid_floor']:.3f}, "
                     f"untrained model {j['untrained_fid']:.3f})")
    return lines


VERBS = {
    "extract": Verb(
        "pre-compute the VAE latents of an image folder (and of its mirror images)", _extract_arguments, run_extract,
        description="Encode DATA_DIR/{train,val}/<class>/* with Stable Diffusion's VAE (from the local Hugging "
        "Face cache only) into DIR; then train on them with `weightformer dit train --latents-dir DIR`."),
    "sample": Verb(
        "draw samples of a checkpoint: a PNG grid and an npz (ADM layout: arr_0 uint8 NHWC)", _sample_arguments,
        run_sample,
        description="Sample a `weightformer dit train` checkpoint. A fixed seed (and batch size) gives the same "
        "samples with any number of processes: torchrun --nproc_per_node N -m weightformer dit sample ..."),
    "fid": Verb(
        "FID and Inception Score of samples against reference images", _fid_arguments, run_fid,
        description="FID (and IS) of SAMPLES (an npz, arr_0 uint8 NHWC) against REFERENCE (an npz or a folder of "
        "images), in Inception-v3's feature space (weights from the local torch hub cache) or, with "
        "--classifier, in a classification checkpoint's (pre-logits; no download)."),
}
