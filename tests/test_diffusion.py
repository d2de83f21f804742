"""The diffusion process (DiT / improved DDPM) against independent float64 statements of its formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dit_reference import dit_release_state_dict
from weightformer import WeightFormerDiT, load_dit_checkpoint
from weightformer.diffusion import (
    GaussianDiffusion,
    create_diffusion,
    ddpm_sample,
    discretized_gaussian_log_likelihood,
    linear_beta_schedule,
    normal_kl,
    space_timesteps,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def _alphas_cumprod_loop(betas: list[float]) -> list[float]:
    out, prod = [], 1.0
    for beta in betas:
        prod *= 1.0 - beta
        out.append(prod)
    return out


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return create_diffusion()


def test_linear_schedule_is_dits(diffusion):
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    torch.testing.assert_close(diffusion.betas, torch.tensor(betas, dtype=F64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(diffusion.alphas_cumprod, torch.tensor(_alphas_cumprod_loop(betas), dtype=F64),
                               rtol=1e-10, atol=0)
    assert diffusion.num_timesteps == 1000 and linear_beta_schedule(500)[-1].item() == pytest.approx(0.04)


def test_q_sample_is_the_closed_form_and_has_its_statistics(diffusion):
    abar = _alphas_cumprod_loop([1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 7, generator=gen, dtype=F64)
    noise = torch.randn(4, 3, 5, 7, generator=gen, dtype=F64)
    t = torch.tensor([0, 10, 500, 999])
    expected = torch.stack([math.sqrt(abar[s]) * x0[i] + math.sqrt(1 - abar[s]) * noise[i] for i, s in enumerate(t)])
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected, rtol=1e-12, atol=1e-12)
    # Statistics of fresh noise: mean sqrt(abar) x0 and variance 1 - abar, over 40000 draws per timestep.
    torch.manual_seed(0)
    x0 = torch.full((40000, 1, 1, 1), 0.7, dtype=F64)
    for step in (50, 600):
        xt = diffusion.q_sample(x0, torch.full((40000,), step))
        assert xt.mean().item() == pytest.approx(0.7 * math.sqrt(abar[step]), abs=0.015)
        assert xt.var().item() == pytest.approx(1 - abar[step], rel=0.03)


def test_posterior_is_the_product_of_the_two_gaussians(diffusion):
    # q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}).
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar = _alphas_cumprod_loop(betas)
    gen = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(2, 3, 2, 3, 3, generator=gen, dtype=F64)
    t = torch.tensor([1, 2, 999])
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, xt, t)
    for i, s in enumerate(t.tolist()):
        precision = (1 - betas[s]) / betas[s] + 1 / (1 - abar[s - 1])
        expected_mean = (math.sqrt(1 - betas[s]) / betas[s] * xt[i]
                         + math.sqrt(abar[s - 1]) / (1 - abar[s - 1]) * x0[i]) / precision
        torch.testing.assert_close(mean[i], expected_mean, rtol=1e-10, atol=1e-12)
        assert variance[i].item() == pytest.approx(1 / precision, rel=1e-10)
        assert log_variance[i].item() == pytest.approx(math.log(1 / precision), rel=1e-10)
        if s == 1:
            variance_1 = 1 / precision
    # t = 0: the posterior is x_0 itself (zero variance); the clipped log variance borrows t = 1's.
    mean0, variance0, log_variance0 = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x0, rtol=1e-12, atol=1e-12)
    assert variance0.abs().max().item() == 0.0
    assert log_variance0[0].item() == pytest.approx(math.log(variance_1), rel=1e-10)


def test_learned_range_variance_interpolates_log_beta_and_log_posterior_variance(diffusion):
    t = torch.tensor([3, 3, 3, 700])
    eps = torch.zeros(4, 2, 2, 2, dtype=F64)
    values = torch.tensor([1.0, -1.0, 0.0, 0.5], dtype=F64).view(4, 1, 1, 1).expand(4, 2, 2, 2)
    out = diffusion.mean_variance_from_output(torch.cat([eps, values], dim=1), torch.zeros(4, 2, 2, 2, dtype=F64), t)
    log_beta = math.log(diffusion.betas[3].item())
    log_post = math.log(diffusion.posterior_variance[3].item())
    logs = out["log_variance"][:, 0, 0, 0].tolist()
    assert logs[0] == pytest.approx(log_beta, rel=1e-12)
    assert logs[1] == pytest.approx(log_post, rel=1e-12)
    assert logs[2] == pytest.approx((log_beta + log_post) / 2, rel=1e-12)
    beta, post = diffusion.betas[700].item(), diffusion.posterior_variance[700].item()
    assert logs[3] == pytest.approx(0.75 * math.log(beta) + 0.25 * math.log(post), rel=1e-12)
    with pytest.raises(ValueError, match="returned 2 channels for 2-channel latents; .* needs 4"):
        diffusion.mean_variance_from_output(eps, eps, t)


def test_normal_kl_is_the_kl_of_two_gaussians():
    gen = torch.Generator().manual_seed(2)
    m1, m2, lv1, lv2 = torch.randn(4, 100, generator=gen, dtype=F64)
    expected = kl_divergence(Normal(m1, torch.exp(0.5 * lv1)), Normal(m2, torch.exp(0.5 * lv2)))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-14)


def test_discretized_gaussian_likelihood_is_a_distribution_over_256_bins():
    bins = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in [(0.1, math.log(0.05)), (-0.9, math.log(0.3)), (0.99, math.log(0.01))]:
        log_p = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)  # the bins tile the real line
        # Each bin's mass against the exact normal CDF (the tanh approximation is good to ~1e-3).
        cdf = Normal(mean, math.exp(log_scale)).cdf
        upper = torch.where(bins > 0.999, torch.ones_like(bins), cdf(bins + 1 / 255))
        lower = torch.where(bins < -0.999, torch.zeros_like(bins), cdf(bins - 1 / 255))
        torch.testing.assert_close(log_p.exp(), upper - lower, rtol=0, atol=2e-3)


def _perfect_output(noise: torch.Tensor, value: float = -1.0):
    """A 'model' whose noise prediction is exact and whose variance value is `value` (-1: the posterior's)."""
    out = torch.cat([noise, torch.full_like(noise, value)], dim=1)
    return lambda x, t, **kwargs: out


def test_loss_of_a_perfect_predictor_is_zero_except_the_decoder_term(diffusion):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 4, 4, generator=gen, dtype=F64) * 2 - 1
    noise = torch.randn(4, 3, 4, 4, generator=gen, dtype=F64)
    t = torch.tensor([0, 1, 250, 999])
    terms = diffusion.training_losses(_perfect_output(noise), x0, t, noise=noise)
    assert terms["mse"].abs().max().item() < 1e-24
    assert terms["vb"][1:].abs().max().item() < 1e-9  # KL of identical Gaussians
    # t = 0: the decoder's negative log-likelihood of x_0 in bits per dimension, stated independently.
    mean = x0[0]  # coef1 = 1 and coef2 = 0 at t = 0, and the predicted x_0 is exact
    std = math.sqrt(diffusion.posterior_variance[1].item())
    cdf = Normal(mean, std).cdf
    upper = torch.where(x0[0] > 0.999, torch.ones_like(mean), cdf(x0[0] + 1 / 255))
    lower = torch.where(x0[0] < -0.999, torch.zeros_like(mean), cdf(x0[0] - 1 / 255))
    expected = -(upper - lower).log().mean().item() / math.log(2)
    assert terms["vb"][0].item() == pytest.approx(expected, rel=2e-3)
    assert terms["loss"].tolist() == pytest.approx((terms["mse"] + terms["vb"]).tolist(), rel=1e-12)


def test_training_losses_match_the_formulas_for_any_output(diffusion):
    gen = torch.Generator().manual_seed(4)
    x0, noise, eps = torch.randn(3, 2, 3, 3, 5, generator=gen, dtype=F64)
    values = torch.rand(2, 3, 3, 5, generator=gen, dtype=F64) * 2 - 1
    t = torch.tensor([7, 420])
    output = torch.cat([eps, values], dim=1)
    terms = diffusion.training_losses(lambda x, s, **kw: output, x0, t, noise=noise)
    abar = diffusion.alphas_cumprod
    for i, s in enumerate(t.tolist()):
        xt = abar[s].sqrt() * x0[i] + (1 - abar[s]).sqrt() * noise[i]
        pred_x0 = (xt - (1 - abar[s]).sqrt() * eps[i]) / abar[s].sqrt()
        beta, abar_prev = diffusion.betas[s], abar[s - 1]
        coef_start = abar_prev.sqrt() * beta / (1 - abar[s])
        coef_t = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar[s])
        true_mean, model_mean = coef_start * x0[i] + coef_t * xt, coef_start * pred_x0 + coef_t * xt
        post_var = beta * (1 - abar_prev) / (1 - abar[s])
        log_var = (values[i] + 1) / 2 * beta.log() + (1 - values[i]) / 2 * post_var.log()
        kl = kl_divergence(Normal(true_mean, post_var.sqrt()), Normal(model_mean, (0.5 * log_var).exp()))
        assert terms["vb"][i].item() == pytest.approx(kl.mean().item() / math.log(2), rel=1e-9)
        assert terms["mse"][i].item() == pytest.approx((noise[i] - eps[i]).pow(2).mean().item(), rel=1e-12)


def test_variational_term_trains_the_variance_not_the_mean(diffusion):
    gen = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(2, 2, 3, 4, 4, generator=gen, dtype=F64)
    output = torch.randn(2, 6, 4, 4, generator=gen, dtype=F64).requires_grad_()
    terms = diffusion.training_losses(lambda x, t, **kw: output, x0, torch.tensor([0, 300]), noise=noise)
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), output, retain_graph=True)
    assert grad_vb[:, :3].abs().max().item() == 0.0 and grad_vb[:, 3:].abs().min().item() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), output)
    assert grad_mse[:, 3:].abs().max().item() == 0.0 and grad_mse[:, :3].abs().min().item() > 0


def test_respacing_keeps_the_cumulative_alphas_and_calls_the_model_with_original_steps(diffusion):
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[:3] == [0, 4, 8] and kept[-1] == 999
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(100, "10,5") == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49, 50, 62, 74, 87, 99]
    # 21 of 1000: stride 49.95 puts some steps on exact .5 ties; DiT accumulates the position, so does this.
    position, expected = 0.0, []
    for _ in range(21):
        expected.append(round(position))
        position += 999 / 20
    assert space_timesteps(1000, 21) == expected and expected != [round(999 / 20 * j) for j in range(21)]
    spaced = create_diffusion("250")
    torch.testing.assert_close(spaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12, atol=0)
    seen = []

    def model(x, t, **kwargs):
        seen.append(int(t[0]))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)

    spaced.p_sample_loop(model, (1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert seen == kept[::-1]
    with pytest.raises(ValueError, match="Cannot take 300 steps from a section of 200"):
        space_timesteps(1000, "300,1,1,1,1")


def _tiny_model(seed: int = 5) -> WeightFormerDiT:
    model = WeightFormerDiT(input_size=8, patch_size=2, hidden_size=48, depth=4, num_classes=10)
    sd = dit_release_state_dict(hidden=48, depth=4, patch=2, seed=seed)
    sd["final_layer.linear.weight"] *= 0.1  # moderate noise predictions and variance values in [-1, 1]
    sd["final_layer.linear.bias"] *= 0.1
    return load_dit_checkpoint(model, sd)


def test_fixed_seed_gives_identical_samples_and_guidance_changes_them():
    model, diffusion = _tiny_model(), create_diffusion("4")
    labels = torch.tensor([1, 4])

    def draw(seed, cfg):
        gen = torch.Generator().manual_seed(seed)
        return ddpm_sample(model, diffusion, labels, (6, 10), cfg_scale=cfg, generator=gen)

    first, again, other = draw(0, 1.0), draw(0, 1.0), draw(1, 1.0)
    assert first.shape == (2, 4, 6, 10) and torch.equal(first, again) and not torch.allclose(first, other)
    guided, guided_again = draw(0, 4.0), draw(0, 4.0)
    assert torch.equal(guided, guided_again) and not torch.allclose(guided, first)
    # Unguided DDPM sampling is p_sample_loop on the model itself, from the same seeded noise.
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 6, 10, generator=gen)
    direct = diffusion.p_sample_loop(model.eval(), noise.shape, noise=noise, model_kwargs=dict(y=labels), generator=gen)
    torch.testing.assert_close(first, direct, rtol=0, atol=0)


def test_the_hybrid_loss_trains_a_tiny_dit():
    torch.manual_seed(0)  # label dropout draws from the global generator
    model, diffusion = _tiny_model().train(), create_diffusion()
    gen = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(2, 4, 4, 6, 10, generator=gen)
    t, y = torch.tensor([10, 200, 500, 900]), torch.tensor([1, 2, 3, 10])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = diffusion.training_losses(model, x0, t, model_kwargs=dict(y=y), noise=noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
