"""Exporting a WeightFormer to ONNX, TorchScript or a `torch.export` program, with dynamic batch, height, width.

All three run the layers' reference path (`weightformer.kernels.reference_enabled` is true while exporting or
tracing; TorchScript compiles only that path), in the two forms exporters need: the dynamic depthwise conv as
nine shifted multiply-adds (a grouped conv would need B*C groups, a number that changes with the batch) and its
adaptive 3x3 pooling as explicit regions with symbolic bounds.

Height and width are exported as 16·h and 16·w (patch size · a symbolic token count) with at least the grid
the dynamic layers pool (3 tokens), so the graph accepts every size the model does and no other.
"""

from pathlib import Path

import torch
from torch.export import Dim

from .weightformer import WeightFormer

__all__ = ["EXPORT_FORMATS", "export_model", "default_export_path"]

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


def default_export_path(name: str, fmt: str) -> Path:
    """NAME.onnx, NAME.pt (TorchScript) or NAME.pt2 (torch.export) in the working directory."""
    return Path(name.split(".")[0] + EXPORT_FORMATS[fmt])


def _dynamic_shapes(model: WeightFormer) -> dict[str, dict[int, object]]:
    p = model.patch_size
    batch = Dim("batch", min=1)
    rows = Dim("token_rows", min=model.min_grid)  # height = p * rows
    cols = Dim("token_cols", min=model.min_grid)  # width = p * cols
    return {"x": {0: batch, 2: p * rows, 3: p * cols}}


def export_model(
    model: WeightFormer,
    path: str | Path,
    fmt: str = "onnx",
    example_size: tuple[int, int] | None = None,
    opset_version: int | None = None,
) -> Path:
    """Export `model` (put in eval mode) to `path` and return the path.

    Args:
        model: a WeightFormer.
        path: output file.
        fmt: "onnx" (one file, input "images" (B, 3, H, W), output "logits"), "torchscript" (torch.jit.script,
            load with torch.jit.load) or "exported-program" (torch.export.save, load with torch.export.load).
        example_size: (H, W) traced for ONNX and torch.export (default: the model's img_size); every other
            multiple of the patch size works too.
        opset_version: ONNX opset (default: the exporter's).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder {path.parent} does not exist.")
    model = model.eval()
    height, width = example_size or model.img_size
    # Batch 2: torch.export treats a size-1 dimension as the constant 1.
    example = torch.randn(2, model.in_chans, height, width, device=model.patch_embed.proj.weight.device)
    model.check_input(example)  # a clear ValueError for sizes the model does not take
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.script(model).save(str(path))
        elif fmt == "exported-program":
            program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(model))
            torch.export.save(program, str(path))
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(model),
                input_names=["images"],
                output_names=["logits"],
                opset_version=opset_version,
                external_data=False,
                verbose=False,
            )
    return path
