"""Gaussian diffusion as DiT trains and samples it: DDPM (Ho et al. 2020) with improved DDPM's learned-range
variance and hybrid loss (Nichol and Dhariwal 2021).

The process lives here, the network elsewhere: a model is any callable `model(x_t, t, **model_kwargs)` returning
(N, 2C, H, W) (the noise eps, then the variance interpolation values v in [-1, 1]) when the diffusion learns
sigma, or (N, C, H, W) otherwise. All schedule arrays are float64; they are cast to the data's dtype at use.

Facts followed (DiT's `diffusion/`, with which the release trains WeightFormer-DiT: its README's "Image
Generation"): linear beta schedule 1e-4 .. 0.02 over 1000 steps; eps prediction;
log variance = frac * log(beta_t) + (1 - frac) * log(beta~_t) with frac = (v + 1) / 2; loss = MSE(eps, eps_hat) +
the variational-bound term (bits per dimension) computed with the predicted mean detached, not rescaled; the
bound's t = 0 term is the discretised Gaussian decoder likelihood. Respaced sampling (e.g. 250 of 1000 steps)
recomputes the betas from the kept steps' cumulative alphas and calls the model with the original timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl

__all__ = ["GaussianDiffusion", "linear_beta_schedule", "space_timesteps", "create_diffusion"]

ModelFn = Callable[..., torch.Tensor]


#################################################################################
#                            Schedules and respacing                            #
#################################################################################


def linear_beta_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear betas, (T,) float64; the end points are scaled by 1000 / T so any T spans the same process."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> list[int]:
    """The timesteps kept when sampling with fewer steps, as DiT / improved DDPM choose them (sorted).

    section_counts: "250" or 250 (evenly spread, first and last step kept), "10,15,20" (that many steps in each
    of three equal sections), or "ddim50" (a fixed integer stride, as DDIM does).
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"Cannot take exactly {desired} steps of 0..{num_timesteps - 1} with an integer stride.")
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        section_counts = [int(x) for x in section_counts.split(",")]
    counts = list(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"Cannot take {count} steps from a section of {size} of the {num_timesteps} timesteps.")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulated, not stride * j: the rounding of ties then matches DiT's steps
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


#################################################################################
#                               Gaussian diffusion                              #
#################################################################################


class GaussianDiffusion:
    """The forward process q(x_t | x_0), the learned reverse process p(x_{t-1} | x_t), its loss and its sampler.

    Args:
        betas: (T,) noise schedule, T >= 2.
        learn_sigma: the model predicts the variance (learned range); otherwise the fixed "large" variance beta_t.
        timestep_map: the original timestep of each of the T steps (respaced diffusion), passed to the model.
    """

    def __init__(self, betas: torch.Tensor, learn_sigma: bool = True, timestep_map: Iterable[int] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(f"betas must be a 1-D schedule of at least 2 values in (0, 1]; got {tuple(betas.shape)}.")
        self.betas = betas
        self.num_timesteps = betas.numel()
        self.learn_sigma = learn_sigma
        mapping = range(self.num_timesteps) if timestep_map is None else list(timestep_map)
        self.timestep_map = torch.tensor(mapping, dtype=torch.long)

        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, beta~_t)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0: its log is taken from beta~_1 (the t = 0 step adds no noise anyway).
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # The fixed "large" variance of models that do not learn it: beta_t, with beta~_1 at t = 0.
        self.fixed_large_variance = torch.cat([self.posterior_variance[1:2], betas[1:]])

    @staticmethod
    def _extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values (T,) indexed by t (N,) -> (N, 1, ..., 1) in like's dtype and device, to broadcast over like."""
        out = values.to(t.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    # -- forward process --------------------------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise. x_start: (N, C, H, W), t: (N,) -> (N, C, H, W)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0), each broadcastable to x_t."""
        mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x_start
                + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._extract(self.posterior_variance, t, x_t),
                self._extract(self.posterior_log_variance_clipped, t, x_t))

    # -- reverse process --------------------------------------------------------------------------------------

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the model sees for step indices t (the original ones in a respaced diffusion)."""
        return self.timestep_map.to(t.device)[t]

    def mean_variance_from_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from the model's output (N, 2C or C, H, W): mean, variance, log_variance,
        pred_xstart and eps, each (N, C, H, W) (the variances broadcastable)."""
        channels = x_t.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.shape[1] != expected:
            raise ValueError(f"The model returned {model_output.shape[1]} channels for {channels}-channel latents; "
                             f"this diffusion (learn_sigma={self.learn_sigma}) needs {expected}.")
        if self.learn_sigma:
            eps, values = torch.split(model_output, channels, dim=1)
            min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._extract(torch.log(self.betas), t, x_t)
            frac = (values + 1) / 2  # v in [-1, 1] -> [0, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            eps = model_output
            variance = self._extract(self.fixed_large_variance, t, x_t)
            log_variance = torch.log(variance)
        pred_xstart = (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                       - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return dict(mean=mean, variance=variance, log_variance=log_variance, pred_xstart=pred_xstart, eps=eps)

    def p_mean_variance(
        self, model: ModelFn, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the model on x_t (N, C, H, W) at step indices t (N,) and return `mean_variance_from_output`."""
        output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        return self.mean_variance_from_output(output, x, t, clip_denoised)

    # -- training loss ----------------------------------------------------------------------------------------

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The variational bound's term at t, in bits per dimension, (N,): KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
        for t > 0, the decoder's negative discretised log-likelihood of x_0 for t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.mean_variance_from_output(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(
        self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample loss terms (N,) for clean latents x_start (N, C, H, W) at step indices t (N,).

        Returns "mse" (MSE(eps, eps_hat), mean over C, H, W), "vb" (with learn_sigma: the bound's term, its mean
        input detached so it trains only the variance) and "loss" = mse + vb. Label dropout for classifier-free
        guidance is the model's (its label embedder drops labels in training mode).
        """
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        terms = {}
        if self.learn_sigma:
            channels = x_start.shape[1]
            if output.shape[1] != 2 * channels:
                raise ValueError(f"The model returned {output.shape[1]} channels for {channels}-channel latents; "
                                 f"a learn_sigma diffusion needs {2 * channels}.")
            eps, values = torch.split(output, channels, dim=1)
            frozen = torch.cat([eps.detach(), values], dim=1)  # the bound trains the variance, not the mean
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t)
        else:
            eps = output
        terms["mse"] = mean_flat((noise - eps) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    # -- sampling ---------------------------------------------------------------------------------------------

    def p_sample(
        self, model: ModelFn, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False, generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} = mean + sigma * z (no noise at t = 0): "sample" and "pred_xstart"."""
        out = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return dict(sample=sample, pred_xstart=out["pred_xstart"])

    @torch.no_grad()
    def p_sample_loop(
        self, model: ModelFn, shape: tuple[int, ...], noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None, clip_denoised: bool = False,
        generator: torch.Generator | None = None, device: torch.device | str | None = None, progress: bool = False,
    ) -> torch.Tensor:
        """Ancestral sampling from x_T = noise (or a fresh N(0, I) draw of `shape`) down to x_0: (N, C, H, W).

        With a seeded `generator` (and the same noise) the samples are identical from run to run.
        """
        x = torch.randn(shape, generator=generator, device=device) if noise is None else noise
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps)
        for i in steps:
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            x = self.p_sample(model, x, t, model_kwargs, clip_denoised, generator)["sample"]
        return x


def create_diffusion(
    timestep_respacing: str | int | None = None, learn_sigma: bool = True, num_timesteps: int = 1000
) -> GaussianDiffusion:
    """DiT's diffusion: linear betas over `num_timesteps`, optionally respaced (e.g. "250" for sampling).

    Training uses the full process (timestep_respacing None); sampling typically 250 respaced steps.
    """
    betas = linear_beta_schedule(num_timesteps)
    if timestep_respacing in (None, ""):
        return GaussianDiffusion(betas, learn_sigma)
    kept = space_timesteps(num_timesteps, timestep_respacing)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    new_betas, last = [], 1.0
    for i in kept:  # keep the cumulative alphas of the kept steps: beta'_k = 1 - abar_{t_k} / abar_{t_(k-1)}
        new_betas.append(1.0 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return GaussianDiffusion(torch.stack(new_betas), learn_sigma, timestep_map=kept)
