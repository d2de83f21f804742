"""`weightformer dit extract|sample|fid`: VAE latents, samples of a WeightFormer-DiT checkpoint and their scores;
`train` is every task's (cli/tasks.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ...cli.options import Verb, add_device, add_ema, add_json, add_output
from .scores import PRC_FEATURES
from .shards import SHARD_BATCHES


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
    parser.add_argument("--shard-batches", type=int, default=SHARD_BATCHES, metavar="N",
                        help="batches per shard file: what a process holds before writing, and what a resumed run "
                        f"skips (default: {SHARD_BATCHES})")
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
                             guided=args.guided_channels, shard_batches=args.shard_batches)
    if result:
        resumed = f" ({result['resumed_shards']} of {result['shards']} shards were on disk)" \
            if result["resumed_shards"] else ""
        print(f"{result['images']} samples in {result['seconds']:.1f} s{resumed}: {result['npz']} (arr_0 uint8 NHWC, "
              f"arr_1 labels), grid {result['png']}")
    return 0


def _fid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", metavar="SAMPLES", help="an npz (arr_0 uint8 NHWC), a folder of images or a .txt "
                        "list of npz shards; alone with --save-stats: the reference whose statistics to save")
    parser.add_argument("reference", metavar="REFERENCE", nargs="?",
                        help="images (as SAMPLES), a statistics npz (--save-stats) or an ADM reference batch npz")
    parser.add_argument("--classifier", default=None, metavar="CKPT", help="score with this classifier's features")
    parser.add_argument("--save-stats", default=None, metavar="FILE",
                        help="write the reference's statistics (mu, sigma, precision/recall features, the feature "
                        "space's key) to this npz, to pass as REFERENCE later")
    parser.add_argument("--prc-features", type=int, default=PRC_FEATURES, metavar="N",
                        help="reference images (evenly spaced) whose features precision/recall compare with every "
                        f"sample's; 0: no precision/recall (default: {PRC_FEATURES}, ADM's reference batch size)")
    parser.add_argument("--splits", type=int, default=10, help="IS splits")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 64 for "
                        "Inception, 256 for a classifier)")
    add_ema(parser)
    add_device(parser)
    add_json(parser, "the scores")
    add_output(parser, "also write the scores to this JSON file", metavar="FILE")


def run_fid(args: argparse.Namespace) -> int:
    import sys

    from ...engine.distributed import resolve_device
    from .metrics import classifier_scorer, inception_scorer
    from .scores import score_sets

    samples, reference = args.samples, args.reference
    if reference is None:
        if args.save_stats is None:
            raise ValueError("needs SAMPLES and REFERENCE, or REFERENCE alone with --save-stats FILE.")
        samples, reference = None, args.samples
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}.")
    device = resolve_device(args.device)
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    extractor = classifier_scorer(args.classifier, device, ema=args.ema, **batch) if args.classifier else \
        inception_scorer(device, **batch)
    result = score_sets(samples, reference, extractor, use_labels=bool(args.classifier), splits=args.splits,
                        prc_features=args.prc_features, save=args.save_stats, output=args.output,
                        progress=sys.stderr.isatty())
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result))
        return 0
    for line in _fid_lines(result):
        print(line)
    return 0


def _fid_lines(result: dict[str, Any]) -> list[str]:
    """The scores as printed: one line, then where the reference statistics went and any notes."""
    reference = f"{result['reference']} reference images" if result["reference"] is not None else "the reference"
    if result["reference_kind"] != "images":
        reference += f" ({result['reference_kind']})"
    lines = []
    if "fid" in result:
        line = f"FID {result['fid']:.3f}"
        if result["sfid"] is not None:
            line += f", sFID {result['sfid']:.3f}"
        line += f", IS {result['is']:.3f} +- {result['is_std']:.3f}"
        if result["precision"] is not None:
            line += f", precision {result['precision']:.4f}, recall {result['recall']:.4f}"
        if "accuracy" in result:
            line += f", {result['accuracy']:.1f} % classified as their conditioning class"
        lines.append(f"{line} ({result['samples']} samples vs {reference}, {result['space']} features)")
    if "saved_stats" in result:
        lines.append(f"Statistics of {reference} in {result['space']} feature space saved to {result['saved_stats']}")
    return lines + [f"Note: {note}" for note in result["notes"]]


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
        "samples with any number of processes: torchrun --nproc_per_node N -m weightformer dit sample ... Shards go "
        "to DIR/shards/ as they are drawn; after an interruption the same command resumes, skipping finished "
        "shards, and the shards are streamed into DIR/samples.npz at the end."),
    "fid": Verb(
        "FID, sFID, IS, precision and recall of samples against a reference", _fid_arguments, run_fid,
        description="FID, sFID, Inception Score and precision/recall (k = 3) of SAMPLES (an npz, arr_0 uint8 NHWC, "
        "a folder or a .txt list of npz shards, read batch by batch) against REFERENCE (images, a statistics npz "
        "from --save-stats, or an ADM reference batch), in Inception-v3's feature space (weights from the local "
        "torch hub cache) or, with --classifier, in a classification checkpoint's (pre-logits; no download; no "
        "sFID). `dit fid REFERENCE --save-stats FILE` only caches the reference's statistics."),
}
