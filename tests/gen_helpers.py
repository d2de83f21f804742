"""Shared fixtures of the generation tests: a WeightFormer-DiT checkpoint as `weightformer dit train` writes it."""

from __future__ import annotations

import numpy as np
import torch

from weightformer.models import create_model


def write_dit_checkpoint(path, num_classes: int = 3, image_size: int = 8, vae: str | None = None, seed: int = 0,
                         vae_factor: int = 8, **model_kwargs):
    """A checkpoint as `weightformer dit train` writes it, of a tiny randomly initialised WeightFormer-DiT whose
    output layers are not zero (so samples depend on the labels). image_size: the model's input side (latent
    cells when vae is set; the config then records image_size * vae_factor pixels). model_kwargs: further
    constructor arguments, recorded in the config's model_kwargs."""
    torch.manual_seed(seed)
    kwargs = dict(hidden_size=16, depth=2, mlp_ratio=2.0, **model_kwargs)
    model = create_model("weightformer_dit_s_2", input_size=image_size, in_channels=4 if vae else 3,
                         num_classes=num_classes, **kwargs)
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    pixels = image_size * (vae_factor if vae else 1)
    config = dict(model="weightformer_dit_s_2", model_kwargs=kwargs, image_size=pixels, vae=vae)
    ema = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(dict(model=model.state_dict(), ema=ema, config=config, task="generation", epoch=1, optimizer={},
                    class_names=[f"c{i}" for i in range(num_classes)]), path)
    return path


def read_npz(path):
    """The images and labels of an ADM-style samples.npz (arr_0, arr_1)."""
    with np.load(path) as npz:
        return npz["arr_0"], npz["arr_1"]
