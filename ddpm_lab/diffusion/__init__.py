"""The diffusion process, plain PyTorch: β schedules, the Gaussian process and its loss, EDM (continuous σ, its
preconditioning and loss), reverse samplers (timestep and σ-space ones), timestep spacing, classifier-free
guidance, and :func:`generate` (n images from a seed, in batches)."""

from ddpm_lab.diffusion.bound import BoundTerms, bound_timesteps, variational_bound
from ddpm_lab.diffusion.core import Denoiser, ImageNoise, SampleStep, image_seed, randn
from ddpm_lab.diffusion.diffusers_sampler import DiffusersSampler
from ddpm_lab.diffusion.edm import DiffusionProcess, EDMDiffusion
from ddpm_lab.diffusion.edm_samplers import EDMDPMSolverSampler, EDMEulerSampler, EDMHeunSampler, SigmaSampler
from ddpm_lab.diffusion.gaussian import GaussianDiffusion
from ddpm_lab.diffusion.generate import Batch, SamplingStopped, generate, generate_batches
from ddpm_lab.diffusion.guidance import ClassifierFreeGuidance, guided
from ddpm_lab.diffusion.samplers import SAMPLERS, DDIMSampler, DDPMSampler, DPMSolverSampler, Sampler, make_sampler
from ddpm_lab.diffusion.schedules import SCHEDULES, karras_sigmas, make_betas
from ddpm_lab.diffusion.spacing import evenly_spaced, fit_timesteps, space_timesteps

__all__ = [
    "Batch",
    "ClassifierFreeGuidance",
    "BoundTerms",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "Denoiser",
    "DiffusionProcess",
    "DiffusersSampler",
    "EDMDPMSolverSampler",
    "EDMDiffusion",
    "EDMEulerSampler",
    "EDMHeunSampler",
    "GaussianDiffusion",
    "ImageNoise",
    "SAMPLERS",
    "SCHEDULES",
    "SampleStep",
    "SamplingStopped",
    "Sampler",
    "SigmaSampler",
    "bound_timesteps",
    "evenly_spaced",
    "fit_timesteps",
    "generate",
    "generate_batches",
    "guided",
    "image_seed",
    "karras_sigmas",
    "make_betas",
    "make_sampler",
    "randn",
    "space_timesteps",
    "variational_bound",
]
