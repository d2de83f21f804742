"""`weightformer models` (the variants) and `weightformer summary NAME` (one model, layer by layer)."""
from __future__ import annotations

import argparse
import json

import torch

from ..analysis.summary import as_dicts, format_table, layer_costs, model_rows, scaling_rows
from ..layers import LINEAR_PREDICTORS
from ..models import create_model, list_models

DEFAULT_RESOLUTIONS = [224, 448, 672, 896, 1248, 1536]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list the WeightFormer variants with their size and cost")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=run_models)

    summary = subparsers.add_parser(
        "summary", help="parameters and GMACs of one model, per layer and against DeiT as resolution grows"
    )
    summary.add_argument("name", choices=list_models(), metavar="NAME", help=", ".join(list_models()))
    summary.add_argument(
        "--img-size", type=int, nargs="+", metavar=("H", "W"), help="input size: H, or H W (default: the model's)"
    )
    summary.add_argument(
        "--resolutions", type=int, nargs="+", default=DEFAULT_RESOLUTIONS, help="square sizes for the scaling table"
    )
    summary.add_argument(
        "--linear-predictor", choices=sorted(LINEAR_PREDICTORS), metavar="NAME",
        help="predictor of the dynamic MLP layers, one of " + ", ".join(sorted(LINEAR_PREDICTORS))
        + " (default: the model's, bilateral); not used by --dense",
    )
    summary.add_argument(
        "--dense", action="store_true",
        help="instead: backbone and total GMACs of Mask R-CNN and UperNet on this model and on the DeiT of its width "
        "at 1024x1024, 1333x800 and 512x2048, and activation memory as resolution grows",
    )
    summary.add_argument("--json", action="store_true", help="print JSON instead of tables")
    summary.set_defaults(func=run_summary)


def run_models(args: argparse.Namespace) -> int:
    rows = model_rows()
    if args.json:
        print(json.dumps(as_dicts(rows), indent=2))
        return 0
    table = [
        [
            r.name,
            f"{r.params_m:.2f}",
            f"{r.gmacs:.2f}",
            f"{r.input_size[0]}x{r.input_size[1]}",
            len(r.dynamic_blocks),
            "-" if r.top1_paper is None else f"{r.top1_paper:.1f}",
        ]
        for r in rows
    ]
    print(format_table(["model", "params (M)", "GMACs", "input", "dynamic blocks", "IN-1k top-1 (paper)"], table))
    return 0


def run_summary(args: argparse.Namespace) -> int:
    if args.dense:
        return run_dense_summary(args)
    options = {} if args.linear_predictor is None else dict(linear_predictor=args.linear_predictor)
    with torch.device("meta"):  # sizes and costs need no memory
        model = create_model(args.name, **options)
    if args.img_size is None:
        img_size = model.img_size
    elif len(args.img_size) in (1, 2):
        img_size = (args.img_size[0], args.img_size[-1])
    else:
        raise ValueError(f"--img-size takes H or H W, got {len(args.img_size)} numbers.")
    model.check_input(torch.empty(1, model.in_chans, *img_size, device="meta"))
    layers = layer_costs(model, img_size)
    deit_name, scaling = scaling_rows(args.name, args.resolutions, **options)
    predictor = next((block.mlp.fc1.predictor_name for block in model.blocks if block.dynamic), None)
    total_params = sum(r.params for r in layers)
    total_gmacs = sum(r.gmacs for r in layers)
    if args.json:
        print(json.dumps(
            dict(
                name=args.name,
                img_size=list(img_size),
                linear_predictor=predictor,
                params=total_params,
                gmacs=total_gmacs,
                layers=as_dicts(layers),
                scaling=dict(baseline=deit_name, rows=as_dicts(scaling)),
            ),
            indent=2,
        ))
        return 0
    grid = (img_size[0] // model.patch_size, img_size[1] // model.patch_size)
    print(f"{args.name} at {img_size[0]}x{img_size[1]}: token grid {grid[0]}x{grid[1]}, width {model.embed_dim}, "
          f"{len(model.blocks)} blocks ({len(model.dynamic_indices)} dynamic: {list(model.dynamic_indices)}, "
          f"linear predictor {predictor})")
    print(f"parameters {total_params / 1e6:.2f} M, {total_gmacs:.3f} GMACs\n")
    rows = [
        [r.layer, r.kind, f"{r.params / 1e6:.3f}", f"{r.gmacs:.4f}", f"{100 * r.gmacs / total_gmacs:.1f}%"]
        for r in layers
    ]
    print(format_table(["layer", "kind", "params (M)", "GMACs", "share"], rows))
    print(f"\nCost as resolution grows (square inputs), against {deit_name} (same width):\n")
    rows = [
        [f"{r.resolution}x{r.resolution}", f"{r.weightformer_gmacs:.2f}", f"{r.deit_gmacs:.2f}",
         f"{r.deit_over_weightformer:.2f}x"]
        for r in scaling
    ]
    print(format_table(["input", f"{args.name} GMACs", f"{deit_name} GMACs", "DeiT / WeightFormer"], rows))
    return 0


def run_dense_summary(args: argparse.Namespace) -> int:
    from ..analysis.dense_cost import BOX_PROPOSALS, MASK_DETECTIONS, dense_cost_rows, memory_rows

    costs, memory = dense_cost_rows(args.name), memory_rows(args.name)
    if args.json:
        print(json.dumps(dict(name=args.name, cost=as_dicts(costs), memory=as_dicts(memory)), indent=2))
        return 0
    by_key = {(r.model, r.height, r.width, r.backbone == args.name): r for r in costs}
    deit = next(r.backbone for r in costs if r.backbone != args.name)
    rows = []
    for (model, height, width, ours), row in by_key.items():
        if ours:
            base = by_key[(model, height, width, False)]
            rows.append([model, f"{width}x{height}", f"{row.backbone_gmacs:.1f}", f"{base.backbone_gmacs:.1f}",
                         f"{row.total_gmacs:.1f}", f"{base.total_gmacs:.1f}",
                         f"{base.backbone_gmacs / row.backbone_gmacs:.2f}x"])
    print(f"Dense prediction on {args.name} against {deit} (GMACs, fvcore convention; Mask R-CNN at torchvision's "
          f"test-time defaults: {BOX_PROPOSALS} proposals, {MASK_DETECTIONS} masks; UperNet with 512 channels):\n")
    print(format_table(["model", "input (WxH)", "backbone", "DeiT backbone", "total", "DeiT total",
                        "DeiT / ours (backbone)"], rows))
    print("\nTraining activation memory of the backbone, batch 1, float32 (MiB; tensors saved for backward):\n")
    rows = [[f"{r.resolution}x{r.resolution}", r.tokens, f"{r.weightformer_mib:.0f}", f"{r.deit_mib:.0f}",
             f"{r.deit_fused_mib:.0f}", f"{r.deit_mib / r.weightformer_mib:.1f}x"] for r in memory]
    print(format_table(["input", "tokens", args.name, f"{deit} (N x N kept)", f"{deit} (fused attention)",
                        "DeiT (N x N) / ours"], rows))
    return 0
