"""`weightformer export-weights RUN|CHECKPOINT -o DIR`: any task's trained model as a weights-only Hub folder."""

from __future__ import annotations

import argparse
import json

from .options import add_ema, add_json, add_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-weights",
        help="write a run's model (any task) as model.safetensors + config.json + a README model card",
        description="Write the weights of a run folder (its checkpoints/best.pth, or last.pth when it has no "
        "best.pth yet) or of a training checkpoint of any task to DIR: model.safetensors (EMA weights by default), "
        "config.json (from which weightformer.from_pretrained(DIR) rebuilds the model, without the checkpoint or "
        "the data; a classifier's folder is timm's Hub layout too) and README.md, a model card with the metrics "
        "the run logged for those weights.",
    )
    parser.add_argument("source", metavar="RUN|CHECKPOINT", help="a run folder or a training checkpoint (.pth)")
    add_output(parser, "the folder to write (created if needed)", required=True, metavar="DIR")
    add_ema(parser)
    add_json(parser, "what was written")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tasks.publish import export_weights

    exported = export_weights(args.source, args.output, ema=args.ema)
    if args.json:
        print(json.dumps(exported.to_dict(), indent=2))
        return 0
    weights = "EMA" if exported.ema else "trained"
    if args.ema and not exported.ema:
        weights += " (the run kept no EMA weights)"
    size = (exported.folder / "model.safetensors").stat().st_size / 2**20
    print(f"Exported the {weights} weights of {exported.checkpoint} ({exported.chosen}; {exported.task.name}, epoch "
          f"{exported.epoch}, step {exported.step}) to {exported.folder}: model.safetensors ({size:.1f} MiB), "
          "config.json, README.md.")
    print(f'Load with weightformer.from_pretrained("{exported.folder}").')
    return 0
