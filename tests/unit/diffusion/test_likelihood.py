"""The variational bound's pieces against their closed forms and against improved-diffusion's formulas (written
here independently, from Nichol & Dhariwal's code as published), and the hybrid/vlb losses on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm_lab import GaussianDiffusion, make_betas
from ddpm_lab.diffusion.bound import bound_timesteps, variational_bound
from ddpm_lab.diffusion.importance import LossHistory
from ddpm_lab.diffusion.likelihood import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from ddpm_lab.errors import ConfigError


def improved_diffusion_kl(mean1, logvar1, mean2, logvar2):
    """improved_diffusion/losses.py ``normal_kl``, as printed there."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * np.exp(-logvar2))


def improved_diffusion_decoder(x, means, log_scales):
    """improved_diffusion/losses.py ``discretized_gaussian_log_likelihood`` with its tanh approximation of Φ."""

    def cdf(v):
        return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))

    centered = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    mid = np.log(np.maximum(cdf_delta, 1e-12))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, mid))


def test_normal_kl_matches_closed_form_and_improved_diffusion() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    lv1, lv2 = (
        2 * torch.randn(64, generator=g, dtype=torch.float64),
        2 * torch.randn(64, generator=g, dtype=torch.float64),
    )
    ours = normal_kl(m1, lv1, m2, lv2)
    torch.testing.assert_close(ours, kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp())))
    np.testing.assert_allclose(ours.numpy(), improved_diffusion_kl(m1.numpy(), lv1.numpy(), m2.numpy(), lv2.numpy()))
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


def test_discretized_decoder_matches_the_bin_integral_and_improved_diffusion() -> None:
    """log ∫_bin N(y; mean, σ²) dy with exact Φ (erf); improved-diffusion's tanh Φ agrees to ≈1e-3 relative."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=g).double() / 127.5 - 1.0  # 8-bit pixels in [−1, 1]
    mean = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1.2, 1.2)
    log_var = torch.empty(x.shape, dtype=torch.float64).uniform_(math.log(1e-4), math.log(0.1), generator=g)
    ours = discretized_gaussian_log_likelihood(x, mean, log_var)
    dist = Normal(mean, (0.5 * log_var).exp())
    upper = torch.where(x > 0.999, torch.ones_like(x), dist.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), dist.cdf(x - 1 / 255))
    torch.testing.assert_close(ours, torch.log((upper - lower).clamp(min=1e-12)), rtol=1e-6, atol=1e-6)
    theirs = improved_diffusion_decoder(x.numpy(), mean.numpy(), 0.5 * log_var.numpy())
    np.testing.assert_allclose(ours.exp().numpy(), np.exp(theirs), atol=2e-3)
    # The 256 bins of a pixel carry all of the probability mass.
    pixels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    mass = discretized_gaussian_log_likelihood(pixels, torch.tensor(0.3), torch.tensor(math.log(0.05))).exp().sum()
    assert abs(mass.item() - 1.0) < 1e-9


def test_continuous_decoder_is_the_gaussian_density() -> None:
    x, mean, log_var = torch.randn(32).double(), torch.randn(32).double(), torch.randn(32).double()
    torch.testing.assert_close(
        gaussian_log_likelihood(x, mean, log_var), Normal(mean, (0.5 * log_var).exp()).log_prob(x)
    )


def tiny_net(channels_out: int):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, channels_out, 3, padding=1))


def model_of(net):
    return lambda x, t: net(x)


def test_hybrid_loss_is_simple_plus_weighted_vlb_with_the_mean_stopped() -> None:
    diffusion = GaussianDiffusion(
        make_betas("linear", timesteps=50, warn=False), variance="learned_range", loss="hybrid"
    )
    net = tiny_net(2)
    x0, t, noise = torch.rand(4, 1, 6, 6) * 2 - 1, torch.tensor([0, 3, 17, 49]), torch.randn(4, 1, 6, 6)
    loss = diffusion.loss(model_of(net), x0, t=t, noise=noise, reduction="none")
    out = net(diffusion.q_sample(x0, t, noise))
    simple = ((out[:, :1] - noise) ** 2).flatten(1).mean(1)
    vlb = diffusion.vlb_terms(out[:, :1], out[:, 1:], x0, diffusion.q_sample(x0, t, noise), t)
    torch.testing.assert_close(loss, simple + 0.001 * 50 * vlb)
    # The mean half learns from L_simple only: its gradient is that of L_simple.
    weight = net[0].weight
    (g_hybrid,) = torch.autograd.grad(loss.sum(), weight)
    (g_simple,) = torch.autograd.grad(simple.sum(), weight)
    torch.testing.assert_close(g_hybrid[:1], g_simple[:1])
    assert g_hybrid[1:].abs().sum() > 0  # the variance half learns from L_vlb


def test_vlb_loss_trains_the_mean_and_simple_loss_is_unchanged() -> None:
    net = tiny_net(1)
    x0, t, noise = torch.rand(4, 1, 6, 6) * 2 - 1, torch.tensor([0, 3, 17, 49]), torch.randn(4, 1, 6, 6)
    vlb = GaussianDiffusion(make_betas("linear", timesteps=50, warn=False), loss="vlb")
    loss = vlb.loss(model_of(net), x0, t=t, noise=noise, reduction="none")
    x_t = vlb.q_sample(x0, t, noise)
    torch.testing.assert_close(loss, 50 * vlb.vlb_terms(net(x_t), None, x0, x_t, t))
    assert torch.autograd.grad(loss.sum(), net[0].weight)[0].abs().sum() > 0
    simple = GaussianDiffusion(make_betas("linear", timesteps=50, warn=False))
    expected = ((net(x_t) - noise) ** 2).flatten(1).mean(1)
    assert torch.equal(simple.loss(model_of(net), x0, t=t, noise=noise, reduction="none"), expected)


@pytest.mark.parametrize(
    "options,culprit",
    [
        ({"loss": "hybrid"}, "diffusion.loss=hybrid"),
        ({"variance": "learned_range"}, "diffusion.variance=learned_range needs"),
        ({"loss": "vlb", "loss_weighting": "min_snr"}, "diffusion.loss_weighting=min_snr"),
        ({"importance_sampling": True}, "diffusion.importance_sampling=true"),
        ({"variance": "learned", "loss": "hybrid"}, "diffusion.variance"),
        ({"loss": "kl"}, "diffusion.loss"),
        ({"loss": "vlb", "vlb_weight": 0}, "diffusion.vlb_weight"),
    ],
)
def test_meaningless_combinations_are_config_errors(options: dict, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        GaussianDiffusion(make_betas("linear", timesteps=10, warn=False), **options)


def test_loss_history_is_uniform_until_full_then_follows_the_second_moment() -> None:
    history = LossHistory(4, size=2, uniform=0.0)
    assert torch.equal(history.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    history.update(torch.tensor([0, 0, 0, 1, 1, 2, 2, 3]), torch.tensor([9.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0]))
    assert torch.equal(history.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # t=3 has one loss
    history.update(torch.tensor([3]), torch.tensor([4.0]))
    torch.testing.assert_close(history.probabilities(), torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64) / 8)
    torch.manual_seed(0)
    t, weights = history.sample(20000, "cpu")
    torch.testing.assert_close(weights, 1 / (4 * history.probabilities()[t]).float())
    assert abs((t == 3).float().mean().item() - 0.5) < 0.02
    # Weighted by 1/(T p_t), a per-t quantity averages as under uniform t (unbiased).
    assert abs((weights * t.float()).mean().item() - 1.5) < 0.05


def test_importance_sampled_training_steps_fill_the_history() -> None:
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=5, warn=False), loss="vlb", importance_sampling=True)
    net = tiny_net(1)
    for _ in range(30):
        t, weights = diffusion.training_timesteps(8, "cpu")
        diffusion.loss(model_of(net), torch.rand(8, 1, 4, 4) * 2 - 1, t=t, weights=weights)
    assert int(diffusion.loss_history.counts.min()) == 10
    assert not torch.allclose(diffusion.loss_history.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))


def test_strided_bound_scales_the_evaluated_terms() -> None:
    assert bound_timesteps(10, 1) == list(range(1, 10)) and bound_timesteps(10, 4) == [1, 5, 9]
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=10, warn=False))
    x0 = torch.randint(0, 256, (3, 1, 4, 4)).float() / 127.5 - 1
    bound = variational_bound(
        model_of(tiny_net(1)), diffusion, x0, stride=4, generator=torch.Generator().manual_seed(0)
    )
    assert bound.terms.shape == (3, 3) and bound.scale == 3.0
    torch.testing.assert_close(bound.total, bound.prior + 3.0 * bound.terms.sum(1) + bound.decoder)
    assert bool((bound.terms >= 0).all()) and bool((bound.decoder > 0).all())
