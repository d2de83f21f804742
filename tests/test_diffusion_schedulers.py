"""diffusers' schedulers drive WeightFormer-DiT: DDPM agrees with our own sampler; every scheduler recovers x_0
from an exact noise predictor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from test_diffusion import _tiny_model
from weightformer.diffusion import create_diffusion, ddpm_sample, ddpm_scheduler, respaced_timesteps, sample

diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_diffusers_ddpm_and_our_ancestral_sampler_agree(cfg_scale):
    model, labels = _tiny_model(), torch.tensor([1, 4])
    ours = ddpm_sample(model, create_diffusion("10"), labels, (6, 10), cfg_scale=cfg_scale,
                       generator=torch.Generator().manual_seed(0))
    theirs = sample(model, ddpm_scheduler(), labels, (6, 10), cfg_scale=cfg_scale,
                    generator=torch.Generator().manual_seed(0), timesteps=respaced_timesteps(10))
    # Same noise, same steps; diffusers keeps its schedule in float32, we in float64.
    assert (ours - theirs).abs().max().item() <= 1e-5 * ours.abs().max().item()
    other = sample(model, ddpm_scheduler(), labels, (6, 10), cfg_scale=cfg_scale,
                   generator=torch.Generator().manual_seed(1), timesteps=respaced_timesteps(10))
    assert (ours - other).abs().max().item() > 1e-2 * ours.abs().max().item()


class ExactNoise(nn.Module):
    """A stand-in DiT that knows x_0 per class and predicts the exact noise of x_t under DiT's schedule."""

    def __init__(self, x0: torch.Tensor, learn_sigma: bool = True) -> None:
        super().__init__()
        self.register_buffer("x0", x0)  # (num_classes, C, H, W)
        self.in_channels, self.num_classes, self.learn_sigma = x0.shape[1], x0.shape[0], learn_sigma
        betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
        self.abar = torch.tensor([math.prod(1 - b for b in betas[: i + 1]) for i in range(1000)], dtype=torch.float64)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (x - abar.sqrt() * self.x0[y]) / (1 - abar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if self.learn_sigma else eps


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm", "pndm"])
def test_every_scheduler_recovers_x0_from_exact_noise(name):
    x0 = torch.rand(3, 4, 6, 10, generator=torch.Generator().manual_seed(0)) * 2 - 1
    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    scheduler = {
        "ddpm": lambda: ddpm_scheduler(),
        "ddim": lambda: diffusers.DDIMScheduler(**common, clip_sample=False),
        "dpm": lambda: diffusers.DPMSolverMultistepScheduler(**common),
        "pndm": lambda: diffusers.PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=True),  # no generator
    }[name]()
    labels = torch.tensor([2, 0])
    out = sample(ExactNoise(x0), scheduler, labels, (6, 10), num_inference_steps=20,
                 generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, x0[labels], rtol=0, atol=2e-3)


def test_schedulers_that_cannot_take_the_variance_are_refused():
    dpm = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", variance_type="learned_range")
    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler with variance_type='learned_range' assumes"):
        sample(ExactNoise(torch.zeros(1, 4, 6, 6)), dpm, torch.tensor([0]), 6)
    with pytest.raises(ValueError, match="learn_sigma=False"):
        sample(ExactNoise(torch.zeros(1, 4, 6, 6), learn_sigma=False), ddpm_scheduler(), torch.tensor([0]), 6)
