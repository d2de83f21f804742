"""Stable Diffusion's VAE (diffusers' AutoencoderKL), loaded from the local Hugging Face cache only.

DiT trains on latents z = 0.18215 * E(x) of sd-vae-ft-ema / sd-vae-ft-mse (8x smaller, 4 channels) and decodes
its samples with x = D(z / 0.18215). Nothing is downloaded here: a VAE missing from the cache is said in one line
with the command that fetches it on a machine with network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["VAE_SCALE", "VAES", "load_vae", "vae_decoder"]

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


def vae_decoder(vae: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents (N, 4, h, w) -> images (N, 3, 8h, 8w) in about [-1, 1]."""
    return lambda z: vae.decode(z / VAE_SCALE).sample
