"""diffusers (test-only dependency) as the numerical reference for schedules and single sampler steps.

diffusers works in float32; ddpm_lab in float64 tables applied to float32 x, so tolerances are float32-sized.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
# diffusers' own numpy-2 deprecation noise in DPMSolverMultistepScheduler.set_timesteps
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale  # noqa: E402

from ddpm_lab import GaussianDiffusion, make_betas, make_sampler  # noqa: E402
from ddpm_lab.diffusion.samplers import dynamic_threshold  # noqa: E402
from ddpm_lab.diffusion.schedules import rescale_zero_terminal_snr  # noqa: E402

# ddpm_lab schedule name (and parameters) -> diffusers beta_schedule (and parameters)
SCHEDULES = {
    "linear": ({}, {"beta_schedule": "linear"}),
    "quadratic": ({}, {"beta_schedule": "scaled_linear"}),
    "quadratic_sd": (
        {"beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    ),
    "cosine": ({}, {"beta_schedule": "squaredcos_cap_v2"}),
    "sigmoid": ({}, {"beta_schedule": "sigmoid"}),
}
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def ours_betas(key: str, T: int, **kw) -> torch.Tensor:
    params, _ = SCHEDULES[key]
    return make_betas(key.split("_")[0], timesteps=T, warn=False, **params, **kw)


@pytest.mark.parametrize("T", [50, 1000])
@pytest.mark.parametrize("key", list(SCHEDULES))
def test_betas_and_alpha_bar_match_diffusers(key: str, T: int) -> None:
    ref = DDPMScheduler(num_train_timesteps=T, **SCHEDULES[key][1])
    betas = ours_betas(key, T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    torch.testing.assert_close(betas, ref.betas.double(), rtol=2e-6, atol=1e-8)
    # float32 cumprod over T factors drifts by ~T ulp relative
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), ref.alphas_cumprod.double(), rtol=T * 2e-7, atol=1e-9)


@pytest.mark.parametrize("key", ["linear", "quadratic_sd", "cosine", "sigmoid"])
def test_zero_terminal_snr_matches_diffusers(key: str) -> None:
    betas = ours_betas(key, 1000)
    ours = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(ours, diffusers_rescale(betas.clone()), rtol=1e-12, atol=1e-15)  # same float64 input
    assert float(torch.prod(1 - ours)) == 0.0
    torch.testing.assert_close(ours, ours_betas(key, 1000, zero_terminal_snr=True))
    ref = DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True, **SCHEDULES[key][1])
    # diffusers rescales float32 betas: ᾱ_t/ᾱ_{t−1} of two tiny numbers near T loses digits
    torch.testing.assert_close(ours, ref.betas.double(), rtol=1e-4, atol=1e-5)


def test_dynamic_threshold_matches_diffusers() -> None:
    ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1e9)
    x0 = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 1, 2, 3, 5, 8]).view(
        -1, 1, 1, 1
    )
    torch.testing.assert_close(dynamic_threshold(x0, 0.9), ref._threshold_sample(x0))


def float64_tables(ref, betas: torch.Tensor):
    """Give a DDPM/DDIM scheduler our float64 tables: its step formulas then run in float64 and must agree
    to rounding (in float32, 1 − ᾱ_t near t = 0 keeps only ~3 digits, so float32 steps differ by ~1e-3 there)."""
    ref.betas = betas.clone()
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = ref.one if ref.config.set_alpha_to_one else ref.alphas_cumprod[0]
    return ref


def _step_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t, a model output and fresh noise, float64."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("respaced", [False, True])
def test_ddpm_step_matches_diffusers(variance: str, prediction: str, respaced: bool) -> None:
    T = 1000
    betas = ours_betas("cosine", T)
    diffusion = GaussianDiffusion(betas, prediction=prediction)
    sampler = make_sampler("ddpm", variance=variance, clip_denoised=True, steps=50 if respaced else None)
    ref = DDPMScheduler(
        num_train_timesteps=T,
        trained_betas=betas.numpy(),
        variance_type=variance,
        prediction_type=PREDICTIONS[prediction],
        clip_sample=True,
    )
    float64_tables(ref, betas)
    ts = sampler.timesteps(T)
    if respaced:
        ref.set_timesteps(timesteps=ts)
    for i in (0, 1, len(ts) // 2, len(ts) - 2, len(ts) - 1):
        t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
        x, output, _ = _step_inputs(seed=i)
        # diffusers draws its noise from the generator: hand ours the same draw
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i), dtype=x.dtype)
        ours, x0 = sampler.step(diffusion, output, t, x, t_prev, noise=noise)
        expected = ref.step(output, t, x, generator=torch.Generator().manual_seed(100 + i))
        torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours, expected.prev_sample, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_ddim_steps_match_diffusers(spacing: str, eta: float, prediction: str) -> None:
    T, steps = 1000, 50
    betas = ours_betas("linear", T)
    diffusion = GaussianDiffusion(betas, prediction=prediction)
    sampler = make_sampler("ddim", steps=steps, eta=eta, spacing=spacing, clip_denoised=True)
    ref = DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=betas.numpy(),
        timestep_spacing=spacing,
        prediction_type=PREDICTIONS[prediction],
        clip_sample=True,
    )
    float64_tables(ref, betas).set_timesteps(steps)
    ts = sampler.timesteps(T)
    assert ts == ref.timesteps.tolist()
    for i in (0, 1, steps // 2, steps - 1):
        t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
        x, output, noise = _step_inputs(seed=i)
        ours, x0 = sampler.step(diffusion, output, t, x, t_prev, noise=noise)
        # ε̂ re-derived from the clipped x̂_0 (GLIDE), so guided outputs keep one consistent pair
        expected = ref.step(
            output, t, x, eta=eta, variance_noise=noise if eta > 0 else None, use_clipped_model_output=True
        )
        torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours, expected.prev_sample, rtol=1e-10, atol=1e-10)


def test_ddim_final_step_without_alpha_one_matches_diffusers() -> None:
    betas = ours_betas("linear", 1000)
    diffusion = GaussianDiffusion(betas)
    sampler = make_sampler("ddim", steps=20, eta=1.0, spacing="leading", clip_denoised=False, set_alpha_to_one=False)
    ref = DDIMScheduler(
        trained_betas=betas.numpy(), timestep_spacing="leading", clip_sample=False, set_alpha_to_one=False
    )
    float64_tables(ref, betas).set_timesteps(20)
    x, output, noise = _step_inputs(seed=3)
    ours, _ = sampler.step(diffusion, output, 0, x, -1, noise=noise)
    torch.testing.assert_close(
        ours, ref.step(output, 0, x, eta=1.0, variance_noise=noise).prev_sample, rtol=1e-10, atol=1e-10
    )


def smooth_model(diffusion: GaussianDiffusion):
    """A deterministic, x- and t-dependent stand-in for a network, bounded so x̂_0 stays moderate."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).view(-1, 1, 1, 1) / diffusion.num_timesteps
        return 0.8 * torch.tanh(x) * (1 - 0.3 * tt) + 0.1 * torch.cos(3 * x + tt)

    return model


@pytest.mark.parametrize(
    "prediction,steps,spacing",
    [
        ("eps", 20, "linspace"),
        ("x0", 20, "linspace"),
        ("v", 20, "linspace"),
        ("eps", 10, "linspace"),
        ("v", 25, "trailing"),
        ("x0", 15, "leading"),
    ],
)
def test_dpm_solver_trajectory_matches_diffusers(prediction: str, steps: int, spacing: str) -> None:
    T = 1000
    betas = ours_betas("cosine" if spacing == "linspace" else "linear", T)
    diffusion = GaussianDiffusion(betas, prediction=prediction)
    model = smooth_model(diffusion)
    sampler = make_sampler("dpm_solver", steps=steps, spacing=spacing, clip_denoised=False)  # diffusers: no clipping
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=betas.numpy(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type=PREDICTIONS[prediction],
        timestep_spacing=spacing,
    )
    ref.set_timesteps(steps)
    assert sampler.timesteps(T) == ref.timesteps.tolist()

    x_T = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = list(sampler.steps(diffusion, model, x_T.clone(), None))
    x = x_T.clone()
    for step, t in zip(ours, ref.timesteps):
        x = ref.step(model(x, t.repeat(x.shape[0])), t, x).prev_sample
        torch.testing.assert_close(step.x, x, rtol=1e-4, atol=1e-4)
    assert len(ours) == steps
