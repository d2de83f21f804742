"""`weightformer dit train | sample | fid`: class-conditional WeightFormer-DiT, its samples and their scores."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from weightformer.tasks.generation import add_config_arguments

    parser = subparsers.add_parser("dit", help="WeightFormer-DiT: class-conditional generation")
    commands = parser.add_subparsers(dest="dit_command", metavar="SUBCOMMAND", required=True)
    train = commands.add_parser(
        "train", help="train on an image folder or the embedded shapes (pixel space), then write a sample grid",
        description="Train WeightFormer-DiT with DiT's hybrid diffusion loss on the engine (recipes in "
        "configs/generation/). Data parallel: torchrun ... -m weightformer dit train.",
    )
    add_config_arguments(train)
    train.set_defaults(func=run_train)
    _add_extract_parser(commands)
    _add_sample_parser(commands)
    _add_fid_parser(commands)


def _add_extract_parser(commands: argparse._SubParsersAction) -> None:
    extract = commands.add_parser(
        "extract", help="pre-compute the VAE latents of an image folder (and of its mirror images)",
        description="Encode DATA_DIR/{train,val}/<class>/* with Stable Diffusion's VAE (from the local Hugging "
        "Face cache only) into OUT; then train on them with `weightformer dit train --latents-dir OUT`.",
    )
    extract.add_argument("data_dir", metavar="DATA_DIR")
    extract.add_argument("--out", required=True, metavar="DIR")
    extract.add_argument("--vae", default="ema", help="ema, mse (sd-vae-ft-*), a Hub repo id or a local folder")
    extract.add_argument("--image-size", type=int, default=256)
    extract.add_argument("--splits", nargs="+", default=["train", "val"])
    extract.add_argument("--batch-size", type=int, default=32)
    extract.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    extract.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from weightformer.tasks.generation.latents import extract_latents

    meta = extract_latents(args.data_dir, args.out, args.vae, args.image_size, tuple(args.splits),
                           args.batch_size, args.device)
    counts = ", ".join(f"{split} {c['images']} ({c['skipped']} unreadable skipped)" for split, c in
                       meta["counts"].items())
    side = args.image_size // meta["factor"]
    print(f"Latents {meta['latent_channels']}x{side}x{side} (and mirrored) of {counts} in {args.out}")
    return 0


def _add_sample_parser(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample", help="draw samples of a checkpoint: a PNG grid and an npz (ADM layout: arr_0 uint8 NHWC)",
        description="Sample a `weightformer dit train` checkpoint. A fixed seed (and batch size) gives the same "
        "samples with any number of processes: torchrun --nproc_per_node N -m weightformer dit sample ...",
    )
    sample.add_argument("checkpoint", metavar="CHECKPOINT")
    sample.add_argument("--num-samples", type=int, default=64)
    sample.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm++"], default="ddpm")
    sample.add_argument("--steps", type=int, default=50)
    sample.add_argument("--cfg-scale", type=float, default=4.0, help="classifier-free guidance (1: none)")
    sample.add_argument("--guided-channels", type=_channels, default=3, metavar="N|all",
                        help="channels guidance mixes: 3, the first 3 of 4 latent ones as DiT's release (default), "
                        "or all")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--classes", type=int, nargs="+", default=None, help="class ids, in turn (default: all)")
    sample.add_argument("--batch-size", type=int, default=64)
    sample.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    sample.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sample.add_argument("--out", required=True, metavar="DIR")
    sample.set_defaults(func=run_sample)


def _channels(text: str) -> int | str:
    """--guided-channels: a number, or "all"."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of channels or all, got {text!r}") from None


def _add_fid_parser(commands: argparse._SubParsersAction) -> None:
    fid = commands.add_parser(
        "fid", help="FID and Inception Score of samples against reference images",
        description="FID (and IS) of SAMPLES (an npz, arr_0 uint8 NHWC) against REFERENCE (an npz or a folder of "
        "images), in Inception-v3's feature space (weights from the local torch hub cache) or, with "
        "--classifier, in a classification checkpoint's (pre-logits; no download).",
    )
    fid.add_argument("samples", metavar="SAMPLES")
    fid.add_argument("reference", metavar="REFERENCE")
    fid.add_argument("--classifier", default=None, metavar="CKPT", help="score with this classifier's features")
    fid.add_argument("--splits", type=int, default=10, help="IS splits")
    fid.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    fid.add_argument("--json", default=None, metavar="FILE", help="also write the numbers here")
    fid.set_defaults(func=run_fid)


def run_train(args: argparse.Namespace) -> int:
    from weightformer.tasks.generation import config_from_args, train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0" and "val_loss" in result:
        print(f"Done: val loss {result['val_loss']:.4f} (mse {result['val_mse']:.4f}), run {result['run_dir']}")
        if "judge" in result:
            j = result["judge"]
            print(f"Judged by a classifier trained on the real images, {j['samples']} guided samples: "
                  f"{j['accuracy']:.1f} % classified as their class (untrained model {j['untrained_accuracy']:.1f} "
                  f"%); classifier-feature FID {j['fid']:.3f} (real-vs-real floor {j['fid_floor']:.3f}, untrained "
                  f"model {j['untrained_fid']:.3f})")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from weightformer.tasks.generation.sample import sample_to_files

    result = sample_to_files(args.checkpoint, args.out, args.num_samples, args.scheduler, args.steps,
                             args.cfg_scale, args.seed, args.classes, args.batch_size, args.device,
                             use_ema=not args.no_ema, guided=args.guided_channels)
    if result:
        print(f"{result['images']} samples in {result['seconds']:.1f} s: {result['npz']} (arr_0 uint8 NHWC, "
              f"arr_1 labels), grid {result['png']}")
    return 0


def run_fid(args: argparse.Namespace) -> int:
    import numpy as np

    from weightformer.tasks.generation.metrics import classifier_scorer, inception_scorer, load_images, score

    scorer = classifier_scorer(args.classifier, args.device) if args.classifier else inception_scorer(args.device)
    samples, reference = load_images(args.samples), load_images(args.reference)
    labels = None
    if args.classifier and args.samples.endswith(".npz"):
        with np.load(args.samples) as npz:
            labels = npz["arr_1"] if "arr_1" in npz.files else None
    result = score(samples, reference, scorer, labels, args.splits)
    space = f"classifier {args.classifier}" if args.classifier else "Inception-v3"
    line = f"FID {result['fid']:.3f}, IS {result['is']:.3f} +- {result['is_std']:.3f}"
    if "accuracy" in result:
        line += f", {result['accuracy']:.1f} % classified as their conditioning class"
    print(f"{line} ({result['samples']} samples vs {result['reference']} reference images, {space} features)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "space": space}, f, indent=1)
    return 0
