"""EDM's math (Karras et al., 2022): the preconditioning identities, the loss weight, the σ distribution, the Karras
schedule's ends, the VP view, σ-space samplers' bookkeeping and the one-line refusals. The samplers' whole chains
are checked against closed-form Gaussian data in test_gaussian_sampling.py."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lab import EDMDiffusion, GaussianDiffusion, generate, make_betas, make_sampler
from ddpm_lab.diffusion import SAMPLERS, ImageNoise, SigmaSampler, karras_sigmas
from ddpm_lab.errors import ConfigError

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)


def test_preconditioning_identities():
    """c_skip + c_out²/σ_d² = 1 (x's variance split), c_in²(σ² + σ_d²) = 1 (unit-variance input),
    λ·c_out² = 1 (unit effective weight), c_noise = ln σ / 4, and σ → 0 makes D the identity."""
    edm = EDMDiffusion(sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = edm.preconditioning(SIGMAS)
    torch.testing.assert_close(c_skip + c_out**2 / 0.25, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_in**2 * (SIGMAS**2 + 0.25), torch.ones_like(SIGMAS))
    torch.testing.assert_close(edm.loss_weight(SIGMAS) * c_out**2, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    tiny = edm.preconditioning(torch.tensor([1e-8], dtype=torch.float64))
    assert abs(float(tiny[0]) - 1) < 1e-12 and float(tiny[1]) < 1e-7


def test_c_in_gives_the_network_unit_variance_inputs():
    """Data of std σ_d noised at σ: c_in·(x_0 + σ n) has unit variance, whatever σ."""
    edm = EDMDiffusion(sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(200_000, generator=g, dtype=torch.float64)
    for sigma in (0.01, 1.0, 80.0):
        _, _, c_in, _ = edm.preconditioning(torch.tensor(sigma, dtype=torch.float64))
        x = c_in * (x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64))
        assert abs(float(x.std()) - 1) < 0.01, sigma


def test_loss_is_the_weighted_denoising_error():
    """loss = λ(σ)·mean ‖D(x_0 + σn; σ) − x_0‖² per sample (eq. 8), whatever the network returns."""
    edm = EDMDiffusion(sigma_data=0.5)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    sigma = SIGMAS.float()
    net = lambda x, c: torch.tanh(x) * c.view(-1, 1, 1, 1) + 0.3  # any function of its inputs
    ours = edm.loss(net, x0, t=sigma, noise=noise, reduction="none")
    d = edm.denoise(net, x0 + sigma.view(-1, 1, 1, 1) * noise, sigma)
    expected = edm.loss_weight(sigma) * ((d - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    weights = torch.arange(1.0, 7.0)
    torch.testing.assert_close(edm.loss(net, x0, t=sigma, noise=noise, weights=weights), (ours * weights).mean())


def test_the_exact_denoiser_has_zero_loss_and_a_unit_variance_target():
    """For F = F_target (the network that reproduces x_0) the loss is 0; for F = 0 it is E‖F_target‖², which is 1
    per dimension for data of std σ_d: the target has unit variance at every σ."""
    edm = EDMDiffusion(sigma_data=0.5)
    g = torch.Generator().manual_seed(2)
    x0 = 0.5 * torch.randn(4096, 1, 2, 2, generator=g)
    sigma = torch.full((4096,), 3.0)
    noise = torch.randn(x0.shape, generator=g)

    def oracle(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, c_in, _ = (c.float().view(-1, 1, 1, 1) for c in edm.preconditioning(sigma.double()))
        return (x0 - c_skip * (x_in / c_in)) / c_out

    assert float(edm.loss(oracle, x0, t=sigma, noise=noise)) < 1e-8
    zero = edm.loss(lambda x, c: torch.zeros_like(x), x0, t=sigma, noise=noise)
    assert abs(float(zero) - 1) < 0.05


def test_training_sigmas_are_log_normal_and_quarters_split_them_evenly():
    edm = EDMDiffusion(p_mean=-1.2, p_std=1.2)
    sigma = edm.sample_timesteps(100_000, "cpu", torch.Generator().manual_seed(3))
    log = sigma.log().double()
    assert abs(float(log.mean()) + 1.2) < 0.02 and abs(float(log.std()) - 1.2) < 0.02
    t, weights = edm.training_timesteps(8, "cpu")
    assert t.shape == (8,) and t.is_floating_point() and weights is None
    shares = torch.bincount(edm.noise_quarter(sigma), minlength=4).double() / len(sigma)
    torch.testing.assert_close(shares, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01, rtol=0)
    assert edm.noise_quarter(torch.tensor([1e-3, 100.0])).tolist() == [0, 3]


def test_karras_schedule_spans_sigma_min_to_sigma_max():
    """schedule=karras: σ_0 = σ_min, σ_{T−1} = σ_max on the ρ-ramp of eq. 5, so the EDM process covers that range."""
    betas = make_betas("karras", timesteps=1000, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    edm = EDMDiffusion(betas)
    low, high = edm.sigma_range()
    assert math.isclose(low, 0.002, rel_tol=1e-9) and math.isclose(high, 80.0, rel_tol=1e-9)
    table = edm.vp.sqrt_recipm1_alphas_cumprod
    torch.testing.assert_close(table.flip(0), karras_sigmas(1000, 0.002, 80.0, 7.0), rtol=1e-9, atol=0)
    assert karras_sigmas(1, 0.1, 10.0).tolist() == pytest.approx([10.0])
    ends = karras_sigmas(5, 0.1, 10.0, 3.0)
    assert math.isclose(float(ends[0]), 10.0) and math.isclose(float(ends[-1]), 0.1)
    assert bool((ends[1:] < ends[:-1]).all())


def test_vp_view_is_the_denoiser_at_each_grid_level():
    """A timestep sampler on an EDM model sees x̂_0 = D(x_t·√(1 + σ_t²); σ_t) at its grid's σ_t, and q_sample is
    (x_0 + σ_t ε)/√(1 + σ_t²)."""
    edm = EDMDiffusion(make_betas("karras", timesteps=20))
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    t = torch.tensor([0, 7, 19])
    sigma = edm.vp.sqrt_recipm1_alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_t = edm.q_sample(x0, t, eps)
    torch.testing.assert_close(x_t, (x0 + sigma * eps) / (1 + sigma**2).sqrt())
    net = lambda x, c: x * c.view(-1, 1, 1, 1)
    torch.testing.assert_close(
        edm.x0_model(net)(x_t, t), edm.denoise(net, x_t * (1 + sigma**2).sqrt(), sigma.flatten())
    )


def test_vp_models_round_sigma_to_their_own_levels():
    """σ-space samplers on a DDPM model evaluate only at its σ_t = √((1 − ᾱ_t)/ᾱ_t), with x_t = √ᾱ_t·x."""
    vp = GaussianDiffusion(make_betas("linear", timesteps=100, warn=False), prediction="eps")
    table = vp.sqrt_recipm1_alphas_cumprod
    assert vp.round_sigma(float(table[40]) * 1.01) == float(table[40]) and vp.round_sigma(0.0) == 0.0
    assert vp.sigma_range() == (float(table[0]), float(table[-1]))
    seen = []
    vp.denoise(lambda x, t: seen.append(int(t[0])) or torch.zeros_like(x), torch.zeros(1, 1, 2, 2), float(table[40]))
    assert seen == [40]
    zero_snr = GaussianDiffusion(make_betas("linear", timesteps=100, zero_terminal_snr=True), prediction="v")
    assert math.isfinite(zero_snr.sigma_range()[1])  # σ_T = ∞ gives way to the largest finite level


def test_sigma_samplers_labels_evaluations_and_options():
    """One label per network evaluation (Heun: 2N − 1), the grid timestep of the evaluated σ; ``timesteps(T)``
    estimates them from T alone, exactly (up to rounding) on a Karras grid with the sampler's range."""
    edm = EDMDiffusion(make_betas("karras", timesteps=1000))
    heun = make_sampler("edm_heun", steps=18)
    visited = heun.visited(edm)
    assert (
        len(visited) == len(heun.timesteps(1000)) == 35 and len(make_sampler("edm_euler", steps=10).visited(edm)) == 10
    )
    assert visited[0] == 999 and visited[-1] == 0 and len(set(visited)) == 18
    assert max(abs(a - b) for a, b in zip(visited, heun.timesteps(1000))) <= 1
    assert make_sampler("edm_dpm_solver", steps=1).timesteps(50) == [49]
    churn = make_sampler("edm_heun", steps=4, s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    levels = churn.sigmas(edm)
    assert churn.evaluated(levels, edm)[0] == levels[0]  # σ_max = 80 is above s_tmax: no churn there
    assert churn.evaluated(levels, edm)[2] == pytest.approx(levels[1] * math.sqrt(2))  # γ = min(40/4, √2 − 1)
    for name in ("edm_heun", "edm_euler", "edm_dpm_solver"):
        sampler = make_sampler(name)
        assert isinstance(sampler, SigmaSampler) and name in SAMPLERS
        assert type(make_sampler(name, **sampler.options)) is type(sampler)
    edm = EDMDiffusion(make_betas("karras", timesteps=1000))
    assert isinstance(edm.default_sampler(), type(make_sampler("edm_heun")))
    sigmas = make_sampler("edm_heun", steps=4, sigma_min=0.01, sigma_max=200.0).sigmas(edm)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.01) and sigmas[-1] == 0.0


@pytest.mark.parametrize(
    "kind,options",
    [("edm_heun", {"steps": 5, "s_churn": 10.0}), ("edm_euler", {"steps": 5}), ("edm_dpm_solver", {"steps": 5})],
)
def test_sigma_samplers_keep_per_image_seeds(kind, options):
    """Image i depends only on (seed, i), also with churn and ancestral noise: batch size and indices change nothing."""
    edm = EDMDiffusion(make_betas("karras", timesteps=100))
    net = lambda x, c: 0.5 * torch.tanh(x)
    sampler = make_sampler(kind, **options)
    whole = generate(net, edm, 4, sampler=sampler, seed=7, shape=(1, 2, 2), batch_size=4)
    split = generate(net, edm, 4, sampler=sampler, seed=7, shape=(1, 2, 2), batch_size=3)
    torch.testing.assert_close(whole, split, rtol=0, atol=1e-6)
    third = generate(net, edm, 1, sampler=sampler, seed=7, shape=(1, 2, 2), indices=[2])
    torch.testing.assert_close(third[0], whole[2], rtol=0, atol=1e-6)
    assert len(ImageNoise(7, [2])) == 1


def test_keep_returns_states_in_vp_scale():
    """Kept states are x/√(1 + σ²) (the x_t a DDPM chain holds there). F = 0 is the exact network for data
    N(0, σ_d²), so entering the step at σ_i the state's std is √(σ_d² + σ_i²)/√(1 + σ_i²): 1 at σ_max, σ_d at the end.
    1024 values give a standard error of ~2.5% and Heun's error at 18 levels is ~3.5%: allowance 10%."""
    edm = EDMDiffusion(make_betas("karras", timesteps=100))
    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    sampler = make_sampler("edm_heun", steps=18, clip_denoised=False)
    x, kept = edm.sample(lambda x, c: torch.zeros_like(x), x_T=x_T, sampler=sampler, keep="all")
    assert set(kept) == set(sampler.visited(edm))
    for sigma in sampler.sigmas(edm)[:-1]:
        t = edm.sigma_timestep(sigma)  # the last state kept under t is the one entering level σ
        expected = math.sqrt((0.25 + sigma**2) / (1 + sigma**2))
        assert abs(float(kept[t].std()) / expected - 1) < 0.1, (t, sigma)
    assert abs(float(x.std()) / 0.5 - 1) < 0.1


def test_refusals_are_one_line():
    with pytest.raises(ConfigError, match="diffusion=edm needs a finite σ_max"):
        EDMDiffusion(make_betas("karras", timesteps=10, zero_terminal_snr=True))
    with pytest.raises(ConfigError, match="diffusion.sigma_data must be > 0"):
        EDMDiffusion(sigma_data=0.0)
    with pytest.raises(ConfigError, match="diffusion.p_std must be > 0"):
        EDMDiffusion(p_std=-1.0)
    with pytest.raises(ConfigError, match="schedule.sigma_min=90 must be below schedule.sigma_max=80"):
        make_betas("karras", sigma_min=90.0)
    with pytest.raises(ConfigError, match="sampler.sigma_min=100 must be below sampler.sigma_max=80"):
        make_sampler("edm_heun", sigma_min=100.0)
    with pytest.raises(ConfigError, match="sampler.eta must be in"):
        make_sampler("edm_euler", eta=2.0)
    with pytest.raises(ConfigError, match="leave nothing of the model's noise levels"):
        make_sampler("edm_dpm_solver", sigma_min=100.0, sigma_max=200.0).sigmas(EDMDiffusion())
