"""GaussianDiffusion: forward process, posterior, parameterizations, loss weighting, zero terminal SNR."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab import GaussianDiffusion, make_betas

PREDICTIONS = ["eps", "x0", "v"]


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", timesteps=1000))


def test_forward_process_mean_and_variance_empirical(diffusion: GaussianDiffusion) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.7, -0.4], dtype=torch.float64).view(1, 2)
    n = 50_000
    for t in (0, 10, 250, 600, 999):
        tt = torch.full((n,), t)
        xt = diffusion.q_sample(x0.expand(n, 2), tt, torch.randn(n, 2, generator=g, dtype=torch.float64))
        ab = diffusion.alphas_cumprod[t]
        mean, var = diffusion.q_mean_variance(x0, torch.tensor([t]))
        torch.testing.assert_close(mean, ab.sqrt() * x0)
        torch.testing.assert_close(var, (1 - ab).expand(1, 1))
        se = (var.sqrt() / n**0.5).item()
        assert (xt.mean(0) - mean[0]).abs().max() < 5 * se
        assert (xt.var(0) / var[0, 0] - 1).abs().max() < 5 * (2 / n) ** 0.5


def test_posterior_is_the_gaussian_product(diffusion: GaussianDiffusion) -> None:
    """q(x_{t−1}|x_t,x_0) ∝ N(x_t; √α_t x_{t−1}, β_t) · N(x_{t−1}; √ᾱ_{t−1} x_0, 1−ᾱ_{t−1})."""
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(2, 3, generator=g, dtype=torch.float64)
    for t in (1, 5, 300, 999):
        beta, ab_prev = diffusion.betas[t], diffusion.alphas_cumprod[t - 1]
        precision = (1 - beta) / beta + 1 / (1 - ab_prev)
        mean = ((1 - beta).sqrt() / beta * xt + ab_prev.sqrt() / (1 - ab_prev) * x0) / precision
        got_mean, got_var = diffusion.q_posterior(x0[None], xt[None], torch.tensor([t]))
        torch.testing.assert_close(got_mean[0], mean)
        torch.testing.assert_close(got_var.flatten()[0], 1 / precision)
    # t = 0: x_{−1} is x_0 itself
    mean0, var0 = diffusion.q_posterior(x0[None], xt[None], torch.tensor([0]))
    torch.testing.assert_close(mean0[0], x0)
    assert var0.item() == 0.0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_parameterizations_round_trip(prediction: str) -> None:
    diffusion = GaussianDiffusion(make_betas("cosine", timesteps=100), prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 5, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 50, 97, 99])
    xt = diffusion.q_sample(x0, t, noise)
    target = diffusion.target(x0, noise, t)
    torch.testing.assert_close(diffusion.predict_x0(xt, t, target), x0)
    torch.testing.assert_close(diffusion.predict_eps(xt, t, target), noise)
    ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    torch.testing.assert_close(target, expected)
    assert diffusion.loss(lambda x, tt: diffusion.target(x0, noise, tt), x0, t=t, noise=noise).item() < 1e-20


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weights(prediction: str) -> None:
    diffusion = GaussianDiffusion(
        make_betas("linear", timesteps=1000), prediction=prediction, loss_weighting="min_snr", min_snr_gamma=5.0
    )
    t = torch.arange(1000)
    snr = diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)
    clipped = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
    expected = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    torch.testing.assert_close(diffusion.loss_weights(t), expected.float())
    assert torch.equal(GaussianDiffusion(diffusion.betas, prediction=prediction).loss_weights(t), torch.ones(1000))


def test_zero_terminal_snr_with_eps_is_refused() -> None:
    betas = make_betas("linear", timesteps=100, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction=v"):
        GaussianDiffusion(betas, prediction="eps")


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_zero_terminal_snr_is_finite_at_T(prediction: str, weighting: str) -> None:
    diffusion = GaussianDiffusion(
        make_betas("cosine", timesteps=100, zero_terminal_snr=True), prediction=prediction, loss_weighting=weighting
    )
    assert diffusion.alphas_cumprod[-1] == 0.0
    g = torch.Generator().manual_seed(3)
    x0, noise, out = torch.randn(3, 4, 1, 2, 2, generator=g)
    t = torch.full((4,), 99)
    xt = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(xt, noise)  # pure noise
    for value in (diffusion.predict_x0(xt, t, out), diffusion.predict_eps(xt, t, out), diffusion.loss_weights(t)):
        assert torch.isfinite(value).all()
    assert torch.isfinite(diffusion.loss(lambda x, tt: out, x0, t=t, noise=noise))


def test_user_errors() -> None:
    betas = make_betas("linear", timesteps=10, warn=False)
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(betas, prediction="score")
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusion(betas, loss_weighting="p2")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(torch.tensor([0.1, 1.5]))
