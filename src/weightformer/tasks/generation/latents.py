"""Stable Diffusion's VAE (diffusers' AutoencoderKL), loaded from the local Hugging Face cache only, and the
latents of an image folder pre-computed with it (fast-DiT's `extract_features.py` role).

DiT trains on latents z = 0.18215 * E(x) of sd-vae-ft-ema / sd-vae-ft-mse (8x smaller, 4 channels) and decodes
its samples with x = D(z / 0.18215). Nothing is downloaded here: a VAE missing from the cache is said in one line
with the command that fetches it on a machine with network.

`extract_latents` writes, per split, `<out>/<split>.npy` of shape (N, 2, C, h, w) float16 (the latent of each
image and of its horizontal flip, both means of the posterior, as fast-DiT stores) and `<out>/<split>-labels.npy`
(N,), plus `<out>/meta.json` (classes, vae, image size, latent factor). Training picks the flipped latent with
probability hflip.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torchvision import transforms

__all__ = ["VAE_SCALE", "VAES", "load_vae", "same_vae", "vae_decoder", "vae_factor", "extract_latents",
           "LatentDataset", "read_meta"]

VAE_SCALE = 0.18215
VAES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}


def load_vae(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """An AutoencoderKL, in eval mode: "ema" / "mse" (DiT's), a Hub repo id, or a folder of `save_pretrained`."""
    from diffusers import AutoencoderKL

    repo = VAES.get(name, name)
    if not Path(repo).is_dir() and repo.count("/") != 1:
        raise ValueError(f"VAE {name!r} is neither ema, mse, a Hub repo id (owner/name) nor a folder.")
    try:
        vae = AutoencoderKL.from_pretrained(repo, local_files_only=True)
    except (OSError, ValueError):
        raise ValueError(f"VAE {repo} is not in the local Hugging Face cache (no download here): on a machine with "
                         f"network run `huggingface-cli download {repo}` and copy its cache (~/.cache/huggingface) "
                         "here, or pass a folder written by save_pretrained.") from None
    return vae.to(device).eval().requires_grad_(False)


def same_vae(a: str, b: str) -> bool:
    """Whether two names of a VAE name the same one: "ema" and "stabilityai/sd-vae-ft-ema", or one folder."""
    a, b = VAES.get(a, a), VAES.get(b, b)
    if Path(a).is_dir() and Path(b).is_dir():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def vae_factor(vae: nn.Module) -> int:
    """Pixels per latent cell: 2^(number of blocks - 1), 8 for Stable Diffusion's VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_decoder(vae: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents (N, C, h, w) -> images (N, 3, f h, f w) in about [-1, 1]."""
    return lambda z: vae.decode(z / VAE_SCALE).sample


def read_meta(latents_dir: str | Path) -> dict[str, Any]:
    path = Path(latents_dir) / "meta.json"
    if not path.is_file():
        raise ValueError(f"{latents_dir} holds no meta.json: not a folder written by `weightformer dit extract`.")
    return json.loads(path.read_text())


@torch.no_grad()
def extract_latents(data_dir: str | Path, out_dir: str | Path, vae_name: str = "ema", image_size: int = 256,
                    splits: tuple[str, ...] = ("train", "val"), batch_size: int = 32,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Encode every image of data_dir/<split>/<class>/* (resized, centre-cropped, and flipped) into out_dir."""
    from ..classification.data import FolderDataset, check_splits

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    classes = check_splits(data_dir, *(list(splits) + [None] * (2 - len(splits)))[:2])
    vae = load_vae(vae_name, device)
    factor = vae_factor(vae)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} must be a multiple of the VAE's factor {factor}.")
    to_unit = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {split: _encode_split(vae, FolderDataset(str(data_dir / split), transform=to_unit), out_dir / split,
                                   image_size // factor, batch_size, device) for split in splits}
    meta = dict(classes=classes, vae=vae_name, image_size=image_size, factor=factor,
                latent_channels=vae.config.latent_channels, counts=counts)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _encode_split(vae: Any, dataset: Any, prefix: Path, side: int, batch_size: int, device: str) -> dict[str, int]:
    """Encode one split's images and their mirror images to <prefix>.npy (N, 2, C, side, side) float16, labels to
    <prefix>-labels.npy, through a memory-mapped temporary file; unreadable images are skipped and counted."""
    from ...engine.data import Unreadable

    tmp = prefix.with_name(f".{prefix.name}.npy.tmp")
    latents = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                        shape=(len(dataset), 2, vae.config.latent_channels, side, side))
    labels = np.empty(len(dataset), dtype=np.int64)
    n = skipped = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        readable = [item for item in items if not isinstance(item, Unreadable)]
        for item in items:
            if isinstance(item, Unreadable):
                print(f"Skipped an unreadable image: {item}", flush=True)
        skipped += len(items) - len(readable)
        if not readable:
            continue
        x = torch.stack([im for im, _ in readable]).to(device)  # (B, 3, S, S) in [-1, 1]
        z = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist.mean * VAE_SCALE  # images, then mirrored
        latents[n:n + len(readable)] = torch.stack(z.chunk(2), dim=1).cpu().numpy()  # (B, 2, C, s, s)
        labels[n:n + len(readable)] = [label for _, label in readable]
        n += len(readable)
    latents.flush()
    np.save(prefix.with_name(f"{prefix.name}-labels.npy"), labels[:n])
    if n < len(dataset):
        np.save(prefix.with_name(f"{prefix.name}.npy"), np.asarray(latents[:n]))
        del latents
        tmp.unlink()
    else:
        del latents
        tmp.rename(prefix.with_name(f"{prefix.name}.npy"))
    return dict(images=n, skipped=skipped)


class LatentDataset(torch.utils.data.Dataset):
    """(latent (C, h, w) float32, label) pairs of one split of an extracted folder; the flipped latent is taken
    with probability hflip (at random per access)."""

    def __init__(self, latents_dir: str | Path, split: str, hflip: float = 0.0) -> None:
        path = Path(latents_dir) / f"{split}.npy"
        if not path.is_file():
            raise ValueError(f"No {split} latents at {path}: run `weightformer dit extract` first.")
        self.latents = np.load(path, mmap_mode="r")  # (N, 2, C, h, w)
        self.labels = np.load(Path(latents_dir) / f"{split}-labels.npy")
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """item: an index, or (index, seed) as the engine's sampler gives (the flip is then drawn from seed)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        draw = random.Random(seed).random() if seed is not None else torch.rand(()).item()
        flip = int(draw < self.hflip)
        return torch.from_numpy(np.array(self.latents[index, flip], dtype=np.float32)), int(self.labels[index])
