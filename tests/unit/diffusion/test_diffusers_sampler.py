"""sampler=diffusers: any diffusers scheduler driving a ddpm_lab chain (diffusers is a dev dependency).

Proof that the wrapper passes our β, parameterization, clipping and generator through: with the equivalent
diffusers scheduler it reproduces our own DDIM and DPM-Solver++(2M) chains step by step, and UniPC and Heun
recover Gaussian data with the closed-form optimal denoiser (see test_gaussian_sampling.py).
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

from test_gaussian_sampling import N, check_moments, optimal_model  # noqa: E402

from ddpm_lab import GaussianDiffusion, generate, load_model, make_betas, make_sampler  # noqa: E402
from ddpm_lab.diffusion.diffusers_sampler import SCHEDULERS  # noqa: E402
from ddpm_lab.errors import ConfigError  # noqa: E402
from helpers import TINY_TRAIN, ours_checkpoint  # noqa: E402


def smooth_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, x- and t-dependent stand-in for a network (bounded, so x̂_0 stays moderate)."""
    tt = t.to(x.dtype).view(-1, 1, 1, 1) / 1000
    return 0.8 * torch.tanh(x) * (1 - 0.3 * tt) + 0.1 * torch.cos(3 * x + tt)


def chain(diffusion, sampler, x_T, seed=0, model=smooth_model):
    return list(
        diffusion.sample_loop(model, x_T=x_T.clone(), sampler=sampler, generator=torch.Generator().manual_seed(seed))
    )


def assert_same_chain(ours, theirs, tol=1e-4):
    assert [s.t for s in ours] == [s.t for s in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(b.x, a.x, rtol=tol, atol=tol)
        torch.testing.assert_close(b.x0_pred, a.x0_pred, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "prediction,spacing,eta,clip",
    [("eps", "trailing", 0.0, False), ("v", "leading", 0.0, True), ("x0", "trailing", 1.0, False)],
)
def test_ddim_scheduler_reproduces_our_ddim(prediction: str, spacing: str, eta: float, clip: bool) -> None:
    """η = 1 too: diffusers' DDIM draws its noise from our generator, in the same order, so seed keeps its meaning."""
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=1000), prediction=prediction)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = make_sampler("ddim", steps=10, eta=eta, spacing=spacing, clip_denoised=clip)
    theirs = make_sampler(
        "diffusers", scheduler="DDIMScheduler", steps=10, spacing=spacing, clip_denoised=clip, options={"eta": eta}
    )
    assert theirs.timesteps(1000) == ours.timesteps(1000)
    assert_same_chain(chain(diffusion, ours, x_T), chain(diffusion, theirs, x_T))


@pytest.mark.parametrize("prediction,spacing,clip", [("eps", "linspace", False), ("v", "trailing", True)])
def test_dpm_solver_scheduler_reproduces_our_dpm_solver(prediction: str, spacing: str, clip: bool) -> None:
    """DPM-Solver++(2M), data prediction, first-order last step to σ = 0: diffusers' defaults and ours."""
    diffusion = GaussianDiffusion(make_betas("cosine", timesteps=1000), prediction=prediction)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = make_sampler("dpm_solver", steps=12, spacing=spacing, clip_denoised=clip)
    options = {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True}
    theirs = make_sampler(
        "diffusers",
        scheduler="DPMSolverMultistepScheduler",
        steps=12,
        spacing=spacing,
        clip_denoised=clip,
        options=options,
    )
    assert_same_chain(chain(diffusion, ours, x_T), chain(diffusion, theirs, x_T))


@pytest.mark.parametrize(
    "scheduler,prediction,options,mean_allowance,std_allowance",
    [
        ("UniPCMultistepScheduler", "eps", {}, 0.02, 0.05),
        ("UniPCMultistepScheduler", "v", {"solver_order": 3}, 0.02, 0.05),
        ("HeunDiscreteScheduler", "eps", {}, 0.02, 0.05),
        ("HeunDiscreteScheduler", "x0", {}, 0.02, 0.05),
    ],
)
def test_closed_form_gaussian(scheduler, prediction, options, mean_allowance, std_allowance) -> None:
    """Heun on the linear schedule: from cosine's σ_max ≈ 10⁴ (t = T−1) its trapezoid first step overshoots."""
    schedule = "linear" if scheduler.startswith("Heun") else "cosine"
    diffusion = GaussianDiffusion(make_betas(schedule, timesteps=1000), prediction=prediction)
    sampler = make_sampler(
        "diffusers", scheduler=scheduler, steps=20, spacing="trailing", clip_denoised=False, options=options
    )
    x = diffusion.sample(
        optimal_model(diffusion), shape=(N, 1, 2, 2), sampler=sampler, generator=torch.Generator().manual_seed(0)
    )
    check_moments(x, mean_allowance, std_allowance)


def test_every_listed_scheduler_samples_and_yields_one_step_per_evaluation() -> None:
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=100, warn=False), prediction="eps")
    for name in SCHEDULERS:
        if name == "DPMSolverSDEScheduler" and "torchsde" not in sys.modules:
            try:
                import torchsde  # noqa: F401
            except ImportError:
                continue
        sampler = make_sampler("diffusers", scheduler=name, steps=5)  # the scheduler's spacing: fractional t too
        calls: list[int] = []

        def model(x, t, calls=calls):
            assert t.dtype == torch.long and t.shape == (x.shape[0],)
            calls.append(int(t[0]))
            return smooth_model(x, t)

        steps = list(diffusion.sample_loop(model, shape=(2, 1, 4, 4), sampler=sampler, generator=torch.Generator()))
        assert [s.t for s in steps] == calls == sampler.timesteps(100), name
        assert steps[-1].x.abs().max() < 1.2 and torch.isfinite(steps[-1].x).all(), name


def test_seed_drives_the_scheduler_noise_and_generate_works() -> None:
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=100, warn=False), prediction="eps")
    sampler = make_sampler("diffusers", scheduler="EulerAncestralDiscreteScheduler", steps=6)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b, c = (chain(diffusion, sampler, x_T, seed)[-1].x for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # same x_T: only the ancestral noise differs
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(chain(diffusion, sampler, x_T, 1)[-1].x, a, rtol=0, atol=0)
    images = generate(smooth_model, diffusion, 3, sampler=sampler, seed=0, batch_size=2, shape=(1, 4, 4))
    assert images.shape == (3, 1, 4, 4) and torch.isfinite(images).all()


def test_learned_variance_outputs() -> None:
    """2C channels: the mean half goes to the scheduler; DDPMScheduler uses the variance half (learned_range)."""
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=100, warn=False), prediction="eps")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def learned(x, t):
        return torch.cat([smooth_model(x, t), torch.full_like(x, 0.9)], 1)

    unipc = make_sampler("diffusers", scheduler="UniPCMultistepScheduler", steps=5)
    assert_same_chain(chain(diffusion, unipc, x_T), chain(diffusion, unipc, x_T, model=learned), tol=0)
    ddpm = make_sampler("diffusers", scheduler="DDPMScheduler", steps=5)
    fixed, wide = chain(diffusion, ddpm, x_T)[-2].x, chain(diffusion, ddpm, x_T, model=learned)[-2].x
    assert torch.isfinite(wide).all() and not torch.allclose(fixed, wide)


def test_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="sampler.scheduler must be one of .*UniPCMultistepScheduler.*got 'Nope'"):
        make_sampler("diffusers", scheduler="Nope")
    with pytest.raises(
        ConfigError,
        match="sampler.options.eta is not an option of UniPCMultistepScheduler; its options: .*solver_order",
    ):
        make_sampler("diffusers", options={"eta": 1.0})
    with pytest.raises(
        ConfigError, match="sampler.options.prediction_type is set by ddpm_lab: use diffusion.prediction"
    ):
        make_sampler("diffusers", options={"prediction_type": "epsilon"})
    with pytest.raises(ConfigError, match="DDIMScheduler cannot take sampler.spacing=quadratic"):
        make_sampler("diffusers", scheduler="DDIMScheduler", spacing="quadratic")
    with pytest.raises(ConfigError, match="sampler.options: UniPCMultistepScheduler refuses them: "):
        make_sampler("diffusers", options={"solver_type": "nope"})
    monkeypatch.setitem(sys.modules, "diffusers.schedulers", None)  # as if diffusers were not installed
    with pytest.raises(ConfigError, match=r"needs the diffusers package: pip install 'ddpm_lab\[diffusers\]'"):
        make_sampler("diffusers")


def test_missing_extra_package_is_named() -> None:
    try:
        import torchsde  # noqa: F401

        pytest.skip("torchsde is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="DPMSolverSDEScheduler needs torchsde: pip install torchsde"):
        make_sampler("diffusers", scheduler="DPMSolverSDEScheduler")


def test_quadratic_spacing_through_custom_timesteps() -> None:
    sampler = make_sampler("diffusers", scheduler="DPMSolverMultistepScheduler", steps=10, spacing="quadratic")
    assert sampler.timesteps(1000) == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]


def test_a_checkpoint_storing_it_loads(tmp_path) -> None:
    """The sampler section a run stores (``+sampler.options...`` included) passes the allow-list and rebuilds."""
    overrides = [*TINY_TRAIN, f"dataset.root={tmp_path}", "sampler=diffusers", "+sampler.options.solver_order=3"]
    _, diffusion, sampler = load_model(ours_checkpoint(tmp_path / "a.ckpt", overrides))
    assert sampler.options == {**make_sampler("diffusers").options, "options": {"solver_order": 3}}
    assert len(sampler.timesteps(diffusion.num_timesteps)) == 20


@pytest.mark.parametrize(
    ("scheduler", "options", "culprit"),
    [
        ("DDIMScheduler", {"eta": 1.5}, "sampler.options.eta must be in [0.0, 1.0], got 1.5"),
        ("DDIMScheduler", {"eta": -0.5}, "sampler.options.eta must be in [0.0, 1.0], got -0.5"),
        ("DDIMScheduler", {"eta": "big"}, "sampler.options.eta must be a number, got 'big'"),
        ("EulerDiscreteScheduler", {"s_churn": -1}, "sampler.options.s_churn must be >= 0.0"),
        ("EulerDiscreteScheduler", {"s_noise": 0}, "sampler.options.s_noise must be in (0.0, 2.0]"),
    ],
)
def test_step_options_diffusers_takes_but_that_break_sampling_are_refused(scheduler, options, culprit):
    """diffusers accepts DDIM's eta=1.5 and samples NaN (black images, exit status 0); refused when built."""
    with pytest.raises(ConfigError) as refused:
        make_sampler("diffusers", scheduler=scheduler, steps=5, options=options)
    assert culprit in str(refused.value)


def test_a_chain_that_goes_non_finite_is_refused_naming_its_options():
    """Whatever the options, a NaN (or, x̂_0 clipped, an absurd) result is refused, never written as images."""
    sampler = make_sampler("diffusers", scheduler="DDIMScheduler", steps=5, options={"eta": 0.5})
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=50, warn=False))
    fine = generate(smooth_model, diffusion, 2, sampler=sampler, seed=0, shape=(1, 4, 4))
    assert torch.isfinite(fine).all()

    def diverging(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan")) if int(t[0]) < 20 else smooth_model(x, t)

    with pytest.raises(ConfigError, match=r"sampler.options=\{'eta': 0.5\}: DDIMScheduler gives non-finite values"):
        generate(diverging, diffusion, 2, sampler=sampler, seed=0, shape=(1, 4, 4))
