"""Sampling a trained WeightFormer-DiT into files: a PNG grid and an `.npz` in the ADM evaluation-suite layout.

    weightformer dit sample runs/dit-synthetic/checkpoints/best.pth --num-samples 600 --out samples/
    torchrun --nproc_per_node 8 -m weightformer dit sample CKPT --num-samples 50000 --out samples/

Samples are drawn in batches of a fixed size; batch b starts from a generator seeded by (seed, b) and holds the
labels of its indices, so the set of samples depends on the seed and batch size only, never on the number of
processes. Batches are grouped into shards written to DIR/shards/ as they are drawn (shards.py): under torchrun,
rank r draws shards r, r + W, r + 2W, ...; an interrupted run resumes with the same command, skipping the shards
on disk; rank 0 finally streams them in index order into one npz. The `.npz` holds uint8 NHWC images under
`arr_0` and their class ids under `arr_1` (ADM's sample script).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ...diffusion import create_diffusion, ddpm_sample, sample
from ...engine.distributed import Dist, resolve_device, setup_distributed, teardown_distributed
from ..loader import load_run_model
from .latents import load_vae, vae_decoder, vae_factor
from .shards import (
    SHARD_BATCHES,
    ShardPlan,
    check_resumable,
    draw_shards,
    finished_shards,
    merge_shards,
    remove_shards,
    write_manifest,
)

__all__ = ["SCHEDULERS", "GUIDE_ALL", "guided_channels", "make_sampler", "sample_labels", "batch_seed", "to_uint8",
           "draw_batch", "generate", "sample_to_files", "save_npz"]

SCHEDULERS = ("ddpm", "ddim", "dpm++")
GUIDE_ALL = "all"  # guided_channels: guide every input channel


def guided_channels(value: int | str, in_channels: int) -> int:
    """How many leading channels classifier-free guidance mixes: `value` (a number) or "all" (`in_channels`).

    DiT's release guides the first 3 of its 4 latent channels (the 4th takes the conditional prediction) and its
    FID numbers depend on it, so 3 is the default wherever this package samples; "all" is the textbook form.
    """
    if value == GUIDE_ALL:
        return in_channels
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= in_channels:
        raise ValueError(f"guided_channels must be a number of channels from 1 to {in_channels} (the model's input "
                         f"channels) or {GUIDE_ALL}, got {value!r}.")
    return value


def make_sampler(name: str, steps: int, guided: int | str = 3) -> Callable[..., torch.Tensor]:
    """A function (model, labels, size, cfg_scale, generator) -> samples for the scheduler `name`.

    ddpm: DiT's ancestral sampler with `steps` respaced steps (learned variance); ddim and dpm++: diffusers'
    DDIMScheduler and DPMSolverMultistepScheduler (second order, "dpmsolver++") on DiT's linear schedule.
    guided: the channels guidance mixes, a number or "all" (see `guided_channels`).
    """
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}.")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}.")
    if name == "ddpm":
        diffusion = create_diffusion(str(steps))
        return lambda model, labels, size, cfg_scale, generator: ddpm_sample(
            model, diffusion, labels, size, cfg_scale=cfg_scale, generator=generator,
            guided_channels=guided_channels(guided, model.in_channels))
    import diffusers

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

    def run(model, labels, size, cfg_scale, generator):
        scheduler = (diffusers.DDIMScheduler(**common, clip_sample=False) if name == "ddim" else
                     diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++"))
        return sample(model, scheduler, labels, size, num_inference_steps=steps, cfg_scale=cfg_scale,
                      generator=generator, guided_channels=guided_channels(guided, model.in_channels))

    return run


def sample_labels(num_samples: int, num_classes: int, classes: Sequence[int] | None = None) -> torch.Tensor:
    """Class ids of samples 0..N-1: `classes` (default all) in turn, so every class gets its share. (N,)"""
    classes = list(range(num_classes)) if not classes else list(classes)
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"Class ids must lie in 0..{num_classes - 1} (the checkpoint has {num_classes} classes); "
                         f"got {', '.join(map(str, bad))}.")
    return torch.tensor(classes)[torch.arange(num_samples) % len(classes)]


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch `batch` of a run seeded `seed`: independent streams, whatever the world size."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, rounded to the nearest level."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def draw_batch(model: nn.Module, labels: torch.Tensor, size: int, sampler: Callable[..., torch.Tensor], seed: int,
               batch_size: int, batch: int, cfg_scale: float, device: torch.device,
               decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """The samples of batch `batch` (indices b*B .. (b+1)*B - 1) as uint8 (n, H, W, 3).

    size: the model's input side (latent side when `decode` maps latents to images)."""
    index = torch.arange(batch * batch_size, min((batch + 1) * batch_size, len(labels)))
    generator = torch.Generator(device=device).manual_seed(batch_seed(seed, batch))
    images = sampler(model, labels[index].to(device), size, cfg_scale, generator)
    return to_uint8(decode(images) if decode is not None else images)


def generate(model: nn.Module, labels: torch.Tensor, size: int, sampler: Callable[..., torch.Tensor],
             seed: int, batch_size: int, batches: Sequence[int], cfg_scale: float, device: torch.device,
             decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[int, np.ndarray]:
    """Draw the samples of `batches` (batch b holds indices b*B .. (b+1)*B - 1): {index: (H, W, 3) uint8}."""
    out: dict[int, np.ndarray] = {}
    for b in batches:
        images = draw_batch(model, labels, size, sampler, seed, batch_size, b, cfg_scale, device, decode)
        out.update(zip(range(b * batch_size, b * batch_size + len(images)), images, strict=True))
    return out


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write arr_0 (N, H, W, 3) uint8 and arr_1 (N,) labels atomically (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, images, labels)
    os.replace(tmp, path)


def sample_to_files(checkpoint: str | Path, out_dir: str | Path, num_samples: int, scheduler: str = "ddpm",
                    steps: int = 50, cfg_scale: float = 4.0, seed: int = 0, classes: Sequence[int] | None = None,
                    batch_size: int = 64, device: str = "auto", ema: bool = True, guided: int | str = 3,
                    shard_batches: int = SHARD_BATCHES) -> dict[str, Any]:
    """Sample a checkpoint (its EMA weights unless `ema=False`) into <out_dir>/samples.npz and samples.png;
    data parallel under torchrun.

    Each rank writes its shards (`shard_batches` batches each) to <out_dir>/shards/ as it draws them; a rerun
    with the same settings skips the shards already there; rank 0 then streams them in index order into one npz
    and removes them (shards.py). guided: the channels guidance mixes, 3 (DiT's release) or "all". Returns
    {"npz", "png", "images", "seconds", "shards", "resumed_shards", "drawn_batches"} (on rank 0).
    """
    if num_samples < 1 or batch_size < 1 or shard_batches < 1:
        raise ValueError(f"--num-samples, --batch-size and --shard-batches must be positive, got {num_samples}, "
                         f"{batch_size} and {shard_batches}.")
    run = load_run_model(checkpoint, "generation", ema)  # every rank checks its input before joining the group
    model, cfg = run.model, run.config
    labels = sample_labels(num_samples, len(run.extras["class_names"]), classes)
    guided_channels(guided, model.in_channels)  # refused here, before any VAE is loaded or process group joined
    sampler = make_sampler(scheduler, steps, guided)
    plan = ShardPlan(num_samples, batch_size, shard_batches)
    stat = os.stat(checkpoint)
    settings = dict(checkpoint=str(Path(checkpoint).resolve()), checkpoint_bytes=stat.st_size,
                    checkpoint_mtime_ns=stat.st_mtime_ns, ema=ema, num_samples=num_samples, classes=classes,
                    scheduler=scheduler, steps=steps, cfg_scale=cfg_scale, guided=guided, seed=seed,
                    batch_size=batch_size, shard_batches=shard_batches, device=resolve_device(device).type)
    check_resumable(Path(out_dir) / "shards", settings)
    vae = load_vae(cfg.vae) if cfg.vae else None  # latents: decode them
    d = setup_distributed(device)
    try:
        decode = vae_decoder(vae.to(d.device)) if vae is not None else None
        size = cfg.image_size // (vae_factor(vae) if vae is not None else 1)
        draw = partial(draw_batch, model.to(d.device), labels, size, sampler, seed, batch_size, cfg_scale=cfg_scale,
                       device=d.device, decode=decode)
        return _sample_on_ranks(draw, plan, labels.numpy(), Path(out_dir), settings, d)
    finally:
        teardown_distributed(d)


def _barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def _sample_on_ranks(draw: Callable[..., np.ndarray], plan: ShardPlan, labels: np.ndarray, out_dir: Path,
                     settings: dict[str, Any], d: Dist) -> dict[str, Any]:
    start, shards = time.perf_counter(), out_dir / "shards"
    if d.primary:
        write_manifest(shards, settings)
    done = finished_shards(shards, plan)  # before the barrier: no rank has drawn anything of this run yet
    _barrier(d)
    mine = [s for s in range(d.rank, plan.num_shards, d.world_size) if s not in done]
    draw_shards(mine, plan, lambda b: draw(batch=b), labels, shards)
    _barrier(d)  # every shard is on disk
    if not d.primary:
        return {}
    npz, png = out_dir / "samples.npz", out_dir / "samples.png"
    merge_shards(shards, plan, labels, npz, png, write_tiles)
    remove_shards(shards, plan)
    return {"npz": npz, "png": png, "images": plan.num_samples, "seconds": time.perf_counter() - start,
            "shards": plan.num_shards, "resumed_shards": len(done),
            "drawn_batches": sum(len(plan.batches(s)) for s in range(plan.num_shards) if s not in done)}


def write_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 8) -> None:
    """A PNG grid of up to `per_class` samples of each class drawn, one row per class. images: (N, H, W, 3)."""
    rows = [images[labels == c][:per_class] for c in np.unique(labels)]
    tiles = np.zeros((len(rows), max(len(r) for r in rows), *images.shape[1:]), dtype=np.uint8)
    for i, row in enumerate(rows):
        tiles[i, : len(row)] = row
    write_tiles(tiles, path)


def write_tiles(tiles: np.ndarray, path: Path) -> None:
    """A PNG of tiles (rows, columns, H, W, 3) uint8, 2 px apart (torchvision's save_image)."""
    from torchvision.utils import save_image

    grid = torch.from_numpy(tiles.reshape(-1, *tiles.shape[2:])).permute(0, 3, 1, 2).float() / 255
    save_image(grid, path, nrow=tiles.shape[1])
