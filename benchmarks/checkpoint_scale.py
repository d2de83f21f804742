"""Checkpoint size and write time of WeightFormer-B and WeightFormer-DiT-B/2 (benchmarks/SCALE.md, "Checkpoints").

For each model: the training checkpoint the engine writes (`engine/run.py::training_state` with AdamW's state
after one step, the grad scaler, ModelEmaV3's copy, RNG states and config, saved by
`engine/checkpoint.py::CheckpointDir.save`: temporary file, fsync, rename, last.pth link), then
`weightformer export-weights` of that checkpoint (read it, rebuild the model, load the EMA weights, write
model.safetensors + config.json + README.md), the safetensors write alone (with an fsync, like the checkpoint),
and `weightformer.from_pretrained` of the exported folder. Times are the median of `--repeats` rounds.

    python benchmarks/checkpoint_scale.py --out /tmp/checkpoint-scale [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.utils import ModelEmaV3

import weightformer
from weightformer.engine.checkpoint import CheckpointDir
from weightformer.engine.distributed import Dist
from weightformer.engine.optim import build_optimizer
from weightformer.engine.run import Position, training_state
from weightformer.tasks import export_weights, get_task, load_config

# (label, task, recipe, config overrides): ImageNet-1K's 1000 classes; DiT-B/2 on 32x32x4 latents (256 px).
MODELS = [
    ("WeightFormer-B", "classification", "base", {}),
    ("WeightFormer-DiT-B/2", "generation", None, dict(model="weightformer_dit_b_2", model_kwargs={}, image_size=32,
                                                    vae="ema")),
]
CLASS_NAMES = [f"n{i:08d}" for i in range(1000)]


def _training_state(task: str, recipe: str | None, overrides: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The engine's checkpoint contents after one AdamW step (so the optimiser holds both moments), and the
    model's parameter count."""
    spec = get_task(task)
    cfg = load_config(spec, recipe, **overrides)
    model = spec.build_checkpoint_model(cfg, {"class_names": CLASS_NAMES})
    optimizer = build_optimizer(model, cfg, 1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=cfg.amp and cfg.amp_dtype == "float16")
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay)
    state = training_state(model, optimizer, scaler, ema, Position(1, 0, 1000), Dist(), global_batch=cfg.batch_size,
                           best=None, counts={}, config=cfg.to_dict(), task=spec.name, class_names=CLASS_NAMES)
    return state, sum(p.numel() for p in model.parameters())


def _timed(fn, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _safetensors_write(weights: dict[str, torch.Tensor], out: Path) -> None:
    save_file(weights, str(out))
    with open(out, "rb+") as f:  # durable, as the training checkpoint is
        os.fsync(f.fileno())


def measure(label: str, task: str, recipe: str | None, overrides: dict[str, Any], out: Path,
            repeats: int) -> dict[str, Any]:
    state, params = _training_state(task, recipe, overrides)
    checkpoints = CheckpointDir(out / "checkpoints", keep=1)
    save_s, path = _timed(lambda: checkpoints.save(state, 1000), repeats)
    state.clear()  # free the optimiser and EMA copies before the export reads the file back
    export_s, _ = _timed(lambda: export_weights(path, out / "exported"), repeats)
    weights = out / "exported" / "model.safetensors"
    exported = weightformer.from_pretrained(out / "exported").state_dict()
    write_s, _ = _timed(lambda: _safetensors_write(exported, out / "alone.safetensors"), repeats)
    load_s, _ = _timed(lambda: weightformer.from_pretrained(out / "exported"), repeats)
    return {"model": label, "parameters": params, "checkpoint_bytes": path.stat().st_size, "checkpoint_save_s": save_s,
            "safetensors_bytes": weights.stat().st_size, "export_weights_s": export_s, "safetensors_write_s": write_s,
            "from_pretrained_s": load_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (several GB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    rows = []
    for label, task, recipe, overrides in MODELS:
        rows.append(measure(label, task, recipe, overrides, args.out / label.replace("/", "_"), args.repeats))
        r = rows[-1]
        print(f"{label}: {r['parameters'] / 1e6:.1f} M parameters; training checkpoint "
              f"{r['checkpoint_bytes'] / 2**20:.0f} MiB in {r['checkpoint_save_s']:.2f} s; model.safetensors "
              f"{r['safetensors_bytes'] / 2**20:.0f} MiB, export-weights {r['export_weights_s']:.2f} s (safetensors "
              f"write alone {r['safetensors_write_s']:.2f} s), from_pretrained {r['from_pretrained_s']:.2f} s",
              flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"torch": torch.__version__, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
