"""`weightformer data pack|verify|bench`: tar shards from an image folder, their checks, data-loading speed."""

from __future__ import annotations

import argparse
import json

from .options import add_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="classification data at scale: pack an image folder into tar shards, verify, time loading",
        description="Classification trains from an ImageNet-layout folder, from tar shards (--data-dir wds:DIR) "
        "or from a local Hugging Face dataset (hf:DIR, hf-stream:DIR). These verbs write and check the shards and "
        "time the data loading of any source.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _add_pack(verbs)
    _add_verify(verbs)
    _add_bench(verbs)


def _add_pack(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "pack", help="write an ImageNet-layout folder as WebDataset tar shards with a manifest",
        description="Write each split of DIR (<split>/<class>/<image>) as OUT/<split>/shard-NNNNNN.tar (the image "
        "files' bytes unchanged, plus .cls members), in the folder's order, with OUT/manifest.json (classes, counts "
        "per class, each shard's samples, bytes and SHA-256, unreadable images left out), a random-access index per "
        "split and timm's _info.json. Train from it with --data-dir wds:OUT.")
    parser.add_argument("source", metavar="DIR", help="dataset folder holding <split>/<class>/<image>")
    parser.add_argument("output", metavar="OUT", help="new folder to write (never overwritten)")
    parser.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard (default 1000)")
    parser.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                        help="sub-folders to pack (default: every sub-folder of DIR)")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards (default 1)")
    add_json(parser, "the manifest's summary")
    parser.set_defaults(func=_run_pack)


def _run_pack(args: argparse.Namespace) -> int:
    from ..tasks.classification.shards import pack_folder

    manifest = pack_folder(args.source, args.output, args.shard_size, args.splits, args.workers)
    summary = {split: {"samples": e["samples"], "shards": len(e["shards"]), "bytes": sum(s["bytes"] for s in
               e["shards"]), "unreadable": len(e["unreadable"])} for split, e in manifest["splits"].items()}
    if args.json:
        print(json.dumps({"output": args.output, "classes": len(manifest["classes"]), "splits": summary}))
        return 0
    for split, s in summary.items():
        left_out = f"; {s['unreadable']} unreadable images left out (listed in the manifest)" if s["unreadable"] else ""
        print(f"{split}: {s['samples']} images in {s['shards']} shards, {s['bytes'] / 1e6:.1f} MB{left_out}")
    print(f"Wrote {args.output} ({len(manifest['classes'])} classes); train from it with --data-dir wds:{args.output}")
    return 0


def _add_verify(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("verify", help="check a pack's shards against its manifest (size, SHA-256)",
                              description="Check that every shard listed in DIR/manifest.json is there, with the "
                              "size and SHA-256 the manifest records. Exit status 1 when one is not.")
    parser.add_argument("folder", metavar="DIR", help="a folder written by weightformer data pack")
    parser.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from ..tasks.classification.shards import verify_shards

    checked, problems = verify_shards(args.folder)
    for line in problems:
        print(line)
    print(f"{checked} shards checked: " + (f"{len(problems)} differ from the manifest" if problems else "all match"))
    return 1 if problems else 0


def _add_bench(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "bench", help="images/s of data loading alone (training transform, the engine's loader)",
        description="Time one pass of a split of a classification source through the training transform, the "
        "engine's sampler and loader (worker start-up included), for each number of workers. The augmentation "
        "comes from the recipe (--config), its size from --img-size.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="a folder, synthetic, wds:DIR, hf:DIR or hf-stream:DIR")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers to time (0 1 2)")
    parser.add_argument("--img-size", type=int, default=32, help="training crop size (default 32)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=None, help="stop after this many images (default: a pass)")
    parser.add_argument("--config", default="synthetic", help="recipe whose augmentation is used (default synthetic)")
    parser.add_argument("--shard-order", default="global", choices=("global", "shards"), help="wds: epoch order")
    add_json(parser, "the timings")
    parser.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from ..tasks import load_config
    from ..tasks.classification.loadbench import loader_throughput

    cfg = load_config("classification", args.config, data_dir=args.data_dir, img_size=args.img_size,
                      batch_size=args.batch_size, shard_order=args.shard_order)
    results = [loader_throughput(cfg, args.split, workers, args.samples) for workers in args.workers]
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        skipped = f", {r['skipped']} unreadable skipped" if r["skipped"] else ""
        print(f"{r['source']} {r['split']}: workers {r['workers']}: {r['images']} images in {r['seconds']:.2f} s, "
              f"{r['images_per_second']:.0f} images/s{skipped}")
    return 0
