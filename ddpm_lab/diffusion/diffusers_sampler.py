"""Any diffusers noise scheduler (UniPC, DPM-Solver, Heun, Euler, DEIS, PNDM, ...) as a ddpm_lab :class:`Sampler`.

diffusers is an optional dependency (``pip install 'ddpm_lab[diffusers]'``): it is imported when a
:class:`DiffusersSampler` is built, never by ``import ddpm_lab``. The scheduler is built on our process: our
β (``trained_betas``), our parameterization (eps → ``epsilon``, x0 → ``sample``, v → ``v_prediction``) and our
clipping; its own settings come from ``options``. All noise is drawn from the chain's seeded CPU streams (one per
image), so ``seed`` keeps its meaning (see :mod:`ddpm_lab.diffusion.generate`).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ddpm_lab.diffusion.core import Denoiser, Generator, ImageNoise, Process, SampleStep
from ddpm_lab.diffusion.gaussian import GaussianDiffusion
from ddpm_lab.diffusion.samplers import SAMPLERS, Sampler, _batch_t
from ddpm_lab.diffusion.schedules import make_betas
from ddpm_lab.diffusion.spacing import SPACINGS, space_timesteps
from ddpm_lab.errors import ConfigError, check_choice, check_number

# Schedulers that take our β and parameterization and step x_t with (model_output, timestep, sample).
SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "SASolverScheduler",
)
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# Schedulers without prediction_type="sample": an x0 network's output reaches them as the v it implies.
NO_X0 = {
    "PNDMScheduler",
    "EulerAncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
}
# Scheduler settings that come from our process or from our own options, never from ``options``.
OWNED = {
    "num_train_timesteps": "the schedule's T",
    "trained_betas": "schedule=...",
    "beta_start": "schedule=...",
    "beta_end": "schedule=...",
    "beta_schedule": "schedule=...",
    "prediction_type": "diffusion.prediction",
    "clip_sample": "sampler.clip_denoised",
    "clip_sample_range": "sampler.clip_denoised",
    "thresholding": "sampler.dynamic_threshold",
    "dynamic_thresholding_ratio": "sampler.dynamic_threshold",
    "sample_max_value": "sampler.dynamic_threshold",
    "timestep_spacing": "sampler.spacing",
}
# Ranges of the ``step`` arguments that diffusers takes whatever their value, and that outside them break sampling
# (DDIM's eta > 1 gives NaN: black images) or blow it up (Karras' noise scale): (low, high), None = unbounded.
STEP_OPTION_RANGES = {"eta": (0.0, 1.0), "s_churn": (0.0, None), "s_tmin": (0.0, None), "s_noise": (0.0, 2.0)}
# With x̂_0 clipped to [-1, 1], a sound chain ends within a few percent of it (PNDM: 1.03); far beyond is broken.
MAX_CLIPPED_SAMPLE = 4.0
# Arguments of ``step`` that the chain itself passes.
STEP_ARGS = {"self", "model_output", "timestep", "sample", "generator", "return_dict"}
LEARNED_VARIANCE = ("learned", "learned_range")


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class ``name``; a one-line ``ConfigError`` when diffusers or its extra is missing."""
    check_choice(name, "sampler.scheduler", SCHEDULERS)
    try:
        module = importlib.import_module("diffusers.schedulers")  # optional: only a diffusers sampler needs it
    except ImportError:
        raise ConfigError(
            "sampler=diffusers needs the diffusers package: pip install 'ddpm_lab[diffusers]' (or pick sampler=ddim)"
        ) from None
    cls = getattr(module, name)
    missing = [b for b in getattr(cls, "_backends", ()) if b != "torch"]  # diffusers' placeholder for a missing extra
    if missing:
        raise ConfigError(f"sampler.scheduler={name} needs {', '.join(missing)}: pip install {' '.join(missing)}")
    return cls


def _parameters(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


class DiffusersSampler(Sampler):
    """A diffusers scheduler driving the reverse chain of a ddpm_lab model.

    Args:
        scheduler: the diffusers class name, e.g. ``UniPCMultistepScheduler`` (see :data:`SCHEDULERS`).
        steps: ``num_inference_steps`` (Heun-type second-order schedulers evaluate the model about twice per step).
        spacing: ``linspace``, ``leading``, ``trailing`` (diffusers' ``timestep_spacing``) or ``quadratic`` (custom
            timesteps; only for schedulers whose ``set_timesteps`` takes them); ``None`` = the scheduler's default.
        clip_denoised: clip x̂_0 to [−1, 1], here: the scheduler is handed the output the clipped x̂_0 implies
            (and clips it again with its ``clip_sample`` or ``thresholding``, where it has them: a no-op).
        dynamic_threshold: percentile of dynamic thresholding (replaces clipping); ``None`` = off.
        options: the scheduler's own settings (``solver_order``, ``use_karras_sigmas``, ...) and extra ``step``
            arguments (``eta`` of DDIM, ``s_churn`` of Euler, ...).

    The model sees integer timesteps: a fractional scheduler timestep (``linspace`` spacing of the Euler family) is
    rounded. A network with 2C output channels (learned variance) passes its first C to the scheduler, except
    ``DDPMScheduler``, which uses the variance (``variance_type=learned_range``). :meth:`timesteps` assumes a linear
    β schedule: settings whose timesteps follow the σs (``use_karras_sigmas``, ...) may visit others when sampling.
    """

    def __init__(
        self,
        scheduler: str = "UniPCMultistepScheduler",
        steps: int = 20,
        spacing: str | None = None,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.cls = scheduler_class(scheduler)
        self.scheduler = scheduler
        self.num_steps = check_number(steps, "sampler.steps", int, low=1)
        if spacing is not None:
            check_choice(spacing, "sampler.spacing", SPACINGS)
        self.spacing = spacing
        self._set_denoising(clip_denoised, dynamic_threshold)
        options = dict(options or {})
        init, step = _parameters(self.cls.__init__), _parameters(self.cls.step) - STEP_ARGS
        for key in options:
            if key in OWNED and key in init:
                raise ConfigError(f"sampler.options.{key} is set by ddpm_lab: use {OWNED[key]} instead")
            if key not in init | step:
                valid = sorted((init | step) - set(OWNED) - {"self", "kwargs"})
                raise ConfigError(
                    f"sampler.options.{key} is not an option of {scheduler}; its options: {', '.join(valid)}"
                )
        for key, (low, high) in STEP_OPTION_RANGES.items():
            if key in options and key in step:
                check_number(
                    options[key], f"sampler.options.{key}", float, low=low, high=high, low_open=key == "s_noise"
                )
        self.scheduler_options = options
        self._init = {k: v for k, v in options.items() if k in init}
        self._step_kwargs = {k: v for k, v in options.items() if k not in init}
        self._generator = "generator" in _parameters(self.cls.step)
        self._clipping = self._clipping_config(init)
        self._custom_timesteps = spacing == "quadratic"
        if self._custom_timesteps and "timesteps" not in _parameters(self.cls.set_timesteps):
            raise ConfigError(f"{scheduler} cannot take sampler.spacing=quadratic: use linspace, leading or trailing")
        if spacing is not None and not self._custom_timesteps and "timestep_spacing" not in init:
            raise ConfigError(f"{scheduler} has no timestep spacing: leave sampler.spacing=null")
        self._rehearse()

    def _rehearse(self) -> None:
        """Run the chain once on a 2×2 image with a zero network, so options that fail only while stepping
        (e.g. UniPC ``solver_order=3`` with ``lower_order_final=false`` on a short chain) are refused now."""
        diffusion = GaussianDiffusion(make_betas("linear", timesteps=1000, warn=False))
        x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
        try:
            for _ in self.steps(diffusion, lambda x, t: torch.zeros_like(x), x, torch.Generator().manual_seed(1)):
                pass
        except ConfigError:
            raise
        except (RuntimeError, ValueError, NotImplementedError, IndexError, TypeError) as e:
            raise ConfigError(f"sampler.options: {self.scheduler} fails with them: {_first_line(e)}") from None

    def _check_sample(self, x: torch.Tensor, t: int, last: bool) -> None:
        """Refuse a chain that went non-finite, or (x̂_0 clipped) ended far outside [-1, 1]: options diffusers
        accepts but that break sampling must not give images written as if fine."""
        broken = None
        if not torch.isfinite(x).all():
            broken = f"non-finite values (NaN or inf) at t={t}"
        elif (
            last
            and (self.clip_denoised or self.dynamic_threshold is not None)
            and float(x.abs().max()) > MAX_CLIPPED_SAMPLE
        ):
            broken = f"values up to {float(x.abs().max()):.3g}, far outside the data's [-1, 1]"
        if broken:
            raise ConfigError(
                f"sampler.options={self.scheduler_options or {}}: {self.scheduler} gives {broken}, so the images "
                "are refused (nothing written): change sampler.options (e.g. DDIM's eta must be in [0, 1])"
            )

    @property
    def options(self) -> dict[str, object]:
        return {
            "scheduler": self.scheduler,
            "steps": self.num_steps,
            "spacing": self.spacing,
            "clip_denoised": self.clip_denoised,
            "dynamic_threshold": self.dynamic_threshold,
            "options": dict(self.scheduler_options) or None,
        }

    def _clipping_config(self, init: set[str]) -> dict[str, Any] | None:
        """The scheduler settings that clip or threshold x̂_0 as we do; ``None`` when it has none (we do it)."""
        if self.dynamic_threshold is None and not self.clip_denoised:
            return {k: False for k in ("clip_sample", "thresholding") if k in init}
        if self.dynamic_threshold is None and "clip_sample" in init:
            return {"clip_sample": True, "clip_sample_range": 1.0}
        if "thresholding" in init:  # s = clamp(p-th percentile, 1, max): max = 1 is plain clipping
            ratio, top = (0.995, 1.0) if self.dynamic_threshold is None else (self.dynamic_threshold, math.inf)
            return {"thresholding": True, "dynamic_thresholding_ratio": ratio, "sample_max_value": top}
        return None

    def make(self, betas: torch.Tensor, prediction: str, **extra: Any) -> Any:
        """A fresh scheduler (they keep state) on these β, its timesteps set."""
        kwargs = {
            "num_train_timesteps": len(betas),
            "trained_betas": betas.double().cpu().numpy(),
            "prediction_type": PREDICTION_TYPES[prediction],
            **(self._clipping or {}),
            **({"timestep_spacing": self.spacing} if self.spacing and not self._custom_timesteps else {}),
            **self._init,
            **extra,
        }
        try:
            scheduler = self.cls(**kwargs)
            if self._custom_timesteps:
                scheduler.set_timesteps(timesteps=space_timesteps(len(betas), self.num_steps, self.spacing)[::-1])
            else:
                scheduler.set_timesteps(self.num_steps)
        except (ValueError, NotImplementedError, TypeError) as e:
            raise ConfigError(
                f"sampler.options: {self.scheduler} refuses them: {str(e).strip().splitlines()[0]}"
            ) from None
        return scheduler

    def timesteps(self, num_timesteps: int) -> list[int]:
        scheduler = self.make(torch.linspace(1e-4, 0.02, num_timesteps, dtype=torch.float64), "eps")
        return [_model_t(t, num_timesteps) for t in scheduler.timesteps]

    @torch.no_grad()
    def steps(
        self, diffusion: Process, model: Denoiser, x: torch.Tensor, generator: Generator | None
    ) -> Iterator[SampleStep]:
        T = diffusion.num_timesteps
        alpha_bar = diffusion.alphas_cumprod.double().cpu().clone()
        # Zero terminal SNR: ᾱ_T = 2⁻²⁴ rather than 0, as diffusers' rescale_betas_zero_snr (σ_T finite).
        if alpha_bar[-1] == 0:
            alpha_bar[-1] = 2.0**-24
        betas = 1.0 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])  # the process's own β
        prediction = getattr(diffusion, "prediction", "eps")
        fed_prediction = "v" if prediction == "x0" and self.scheduler in NO_X0 else prediction
        extra: dict[str, Any] = {}
        if "noise_sampler_seed" in _parameters(self.cls.__init__) and "noise_sampler_seed" not in self._init:
            # DPMSolverSDE draws its Brownian tree from a seed (one per image: a list): take it from our streams.
            extra["noise_sampler_seed"] = _seeds(generator)
        scheduler = self.make(betas, fed_prediction, **extra)
        # diffusers draws row k of its noise from generator[k] when given a list: one stream per image, as ours.
        theirs = generator.generators if isinstance(generator, ImageNoise) else generator
        step_kwargs = dict(self._step_kwargs, **({"generator": theirs} if self._generator else {}))
        channels = x.shape[1]
        x = x * scheduler.init_noise_sigma  # σ-space schedulers (Euler, Heun, ...) start at x_T·σ_max
        final = len(scheduler.timesteps) - 1
        for i, t in enumerate(scheduler.timesteps):
            tt = _batch_t(_model_t(t, T), x)
            x_in = scheduler.scale_model_input(x, t)  # back to x_t = √ᾱ x_0 + √(1−ᾱ) ε
            output = model(x_in, tt).to(x.dtype)
            if output.shape[1] == 2 * channels and self.scheduler.startswith("DDPM"):
                if scheduler.config.variance_type not in LEARNED_VARIANCE:
                    scheduler = self.make(betas, fed_prediction, variance_type="learned_range", **extra)
                fed = output
            else:
                output = fed = output[:, :channels]
            x0 = self.denoised(diffusion, x_in, tt, output[:, :channels])
            if self.changes_x0 or fed_prediction != prediction:
                # The output our (clipped) x̂_0 implies: every scheduler then steps with one consistent (x̂_0, ε̂)
                # pair, whatever it derives from the output (diffusers' DDIM would pair its clipped x̂_0 with the
                # raw ε̂; see ddpm_lab.diffusion.samplers). Its own clipping of that x̂_0 changes nothing.
                fed = torch.cat([_output_of(diffusion, fed_prediction, x_in, tt, x0), fed[:, channels:]], dim=1)
            try:
                x = scheduler.step(fed, t, x, **step_kwargs).prev_sample.to(x.dtype)
            except (IndexError, RuntimeError, ValueError, NotImplementedError) as e:  # raised inside diffusers
                raise ConfigError(
                    f"sampler.options: {self.scheduler} fails on this schedule with them: {_first_line(e)}"
                ) from e
            out = _unscaled(scheduler, x)
            self._check_sample(out, int(tt[0]), last=i == final)
            yield SampleStep(t=int(tt[0]), x=out, x0_pred=x0)


SAMPLERS["diffusers"] = DiffusersSampler  # make_sampler("diffusers", scheduler=..., ...)


def _seeds(generator: Generator | None) -> int | list[int]:
    """Seeds for a noise sampler of diffusers: one per image from per-image streams, else one from ``generator``."""
    if isinstance(generator, ImageNoise):
        return generator.integers(2**31 - 1)
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def _first_line(error: BaseException) -> str:
    """The first line of an error from diffusers or torch (their messages run over several)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _model_t(t: torch.Tensor | float, num_timesteps: int) -> int:
    """The integer timestep the network sees for a (possibly fractional) scheduler timestep."""
    return min(max(int(round(float(t))), 0), num_timesteps - 1)


def _output_of(diffusion: Process, prediction: str, x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The output, in the network's parameterization, whose x̂_0 is ``x0``.

    ε̂ = (x_t − √ᾱ x̂_0)/√(1−ᾱ), v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂_0.
    """
    if prediction == "x0":
        return x0
    ab = diffusion.alphas_cumprod.to(x.device)[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0


def _unscaled(scheduler: Any, x: torch.Tensor) -> torch.Tensor:
    """x in the variance-preserving form of our chain: σ-space schedulers hold x·√(σ² + 1)."""
    if float(scheduler.init_noise_sigma) == 1.0 or getattr(scheduler, "step_index", None) is None:
        return x
    sigma = float(scheduler.sigmas[min(scheduler.step_index, len(scheduler.sigmas) - 1)])
    return x / math.sqrt(sigma**2 + 1.0)
