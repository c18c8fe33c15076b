"""EDM models and diffusers' EDM schedulers: the stored sections <-> ``EDMEulerScheduler`` /
``EDMDPMSolverMultistepScheduler`` configs. Plain dicts (diffusers is imported by ``diffusers_io`` only).

The two sides compute the same thing: diffusers' EDM schedulers scale the U-Net's input by c_in
(``scale_model_input``), call it at t = c_noise = ln(σ)/4 (their ``timesteps``) and form
D = c_skip·x + c_out·F with EDM's c_skip and c_out (``prediction_type="epsilon"``), on the Karras ramp between
``sigma_min`` and ``sigma_max``: our ``schedule=karras`` and ``EDMDiffusion`` exactly, our U-Net as a
``UNet2DModel``. ``ConsistencyModelPipeline`` runs that loop (x·``init_noise_sigma``, ``scale_model_input``,
U-Net, ``step``), so it is the pipeline an exported folder names. diffusers has no EDM Heun and no ancestral EDM
Euler scheduler: those samplers export as DPM-Solver++(2M).
"""

from __future__ import annotations

from typing import Any

from ddpm_lab.artifacts.allow_list import target_name
from ddpm_lab.diffusion import SAMPLERS, EDMDiffusion, EDMDPMSolverSampler, EDMEulerSampler, SigmaSampler, make_betas
from ddpm_lab.errors import ConfigError

EDM_SCHEDULERS = ("EDMDPMSolverMultistepScheduler", "EDMEulerScheduler")
EDM_PIPELINE = "ConsistencyModelPipeline"


def is_edm(config: dict[str, Any]) -> bool:
    """Whether a stored config is an EDM model."""
    return (config.get("diffusion") or {}).get("_target_") == target_name(EDMDiffusion)


def _sampler_kind(sampler: dict[str, Any]) -> type | None:
    targets = {target_name(cls): cls for cls in (EDMDPMSolverSampler, EDMEulerSampler)}
    return targets.get(sampler.get("_target_"))


def edm_scheduler_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(class name, config) of the diffusers EDM scheduler for a stored EDM config: the schedule's Karras levels
    (narrowed to the sampler's σ range), σ_data, and the sampler's kind where diffusers has it."""
    schedule, sampler = config["schedule"], config.get("sampler") or {}
    if schedule.get("name") != "karras" or schedule.get("zero_terminal_snr"):
        raise ConfigError(
            f"diffusers' EDM schedulers put σ on the Karras ramp only, but this EDM model was trained with "
            f"schedule={schedule.get('name')}: export one trained with schedule=karras"
        )
    low, high, rho = (float(schedule.get(k, d)) for k, d in (("sigma_min", 0.002), ("sigma_max", 80.0), ("rho", 7.0)))
    if sampler.get("_target_") in {target_name(cls) for cls in SAMPLERS.values() if issubclass(cls, SigmaSampler)}:
        low, high = max(low, float(sampler.get("sigma_min", low))), min(high, float(sampler.get("sigma_max", high)))
        rho = float(sampler.get("rho", rho))
    common = {
        "sigma_min": low,
        "sigma_max": high,
        "sigma_data": float(config["diffusion"].get("sigma_data", 0.5)),
        "sigma_schedule": "karras",
        "num_train_timesteps": int(schedule.get("timesteps", 1000)),
        "prediction_type": "epsilon",  # D = c_skip·x + c_out·F: EDM's F
        "rho": rho,
        "final_sigmas_type": "zero",
    }
    kind = _sampler_kind(sampler)
    if kind is EDMEulerSampler and float(sampler.get("eta", 1.0)) == 0.0:
        return "EDMEulerScheduler", common
    clip = bool(sampler.get("clip_denoised", False)) if kind is EDMDPMSolverSampler else False
    return "EDMDPMSolverMultistepScheduler", {
        **common,
        "solver_order": int(sampler.get("order", 2)) if kind is EDMDPMSolverSampler else 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "thresholding": clip,  # clamp(percentile, 1, sample_max_value = 1) = 1: plain clipping to [−1, 1]
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
    }


def edm_sections(name: str, scheduler: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The stored ``schedule``, ``diffusion`` and ``sampler`` sections of a diffusers EDM scheduler config (its
    defaults filled in); one ConfigError naming everything ddpm_lab has no counterpart for."""
    expected = {"prediction_type": "epsilon", "sigma_schedule": "karras", "final_sigmas_type": "zero"}
    if name == "EDMDPMSolverMultistepScheduler":
        expected.update(algorithm_type="dpmsolver++", solver_type="midpoint", euler_at_final=False)
    problems = [f"{key}={scheduler[key]!r}" for key, value in expected.items() if scheduler.get(key, value) != value]
    order = int(scheduler.get("solver_order", 2))
    if name == "EDMDPMSolverMultistepScheduler" and order > 2:
        problems.append(f"solver_order={order}")
    clip = bool(scheduler.get("thresholding", False))
    if clip and float(scheduler.get("sample_max_value", 1.0)) != 1.0:
        problems.append(f"thresholding with sample_max_value={scheduler['sample_max_value']}")
    if problems:
        raise ConfigError(f"{where}: ddpm_lab has no counterpart for {name} with {', '.join(problems)}")
    sigmas = {k: float(scheduler[k]) for k in ("sigma_min", "sigma_max")}
    rho = float(scheduler.get("rho", 7.0))
    sampler: dict[str, Any] = {**sigmas, "rho": rho, "clip_denoised": clip, "dynamic_threshold": None}
    if name == "EDMEulerScheduler":
        sampler = {"_target_": target_name(EDMEulerSampler), "steps": 35, **sampler, "eta": 0.0}
    else:
        sampler = {"_target_": target_name(EDMDPMSolverSampler), "steps": 25, **sampler, "order": order}
    return {
        "schedule": {
            "_target_": target_name(make_betas),
            "name": "karras",
            "timesteps": int(scheduler.get("num_train_timesteps", 1000)),
            **sigmas,
            "rho": rho,
            "zero_terminal_snr": False,
        },
        "diffusion": {
            "_target_": target_name(EDMDiffusion),
            "sigma_data": float(scheduler.get("sigma_data", 0.5)),
            "p_mean": -1.2,
            "p_std": 1.2,
        },
        "sampler": sampler,
    }
