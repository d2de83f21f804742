"""The diffusion process of WeightFormer-DiT (DiT's `diffusion/` role): schedule, loss, samplers.

`create_diffusion()` for training, `create_diffusion("250")` for sampling; `ddpm_sample` draws class-conditional
latents with classifier-free guidance; `sample` lets a diffusers scheduler drive the model (optional dependency:
pip install "weightformer[generation]").
"""

from .gaussian_diffusion import GaussianDiffusion, create_diffusion, linear_beta_schedule, space_timesteps
from .losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .sampling import ddpm_sample, ddpm_scheduler, respaced_timesteps, sample

__all__ = [
    "GaussianDiffusion",
    "create_diffusion",
    "linear_beta_schedule",
    "space_timesteps",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "approx_standard_normal_cdf",
    "mean_flat",
    "ddpm_sample",
    "sample",
    "ddpm_scheduler",
    "respaced_timesteps",
]
