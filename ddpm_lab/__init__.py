"""ddpm_lab: configuration-driven DDPM diffusion models.

The math, the networks and the checkpoint format are plain PyTorch and import nothing from Lightning or Hydra::

    import torch, ddpm_lab
    betas = ddpm_lab.make_betas("cosine", timesteps=1000)             # float64 tensor of β_t
    diffusion = ddpm_lab.GaussianDiffusion(betas, prediction="eps")    # "eps" | "x0" | "v"
    # or EDM (Karras et al., 2022): ddpm_lab.EDMDiffusion(ddpm_lab.make_betas("karras"), sigma_data=0.5)
    sampler = ddpm_lab.make_sampler("ddim", steps=50, eta=0.0)         # as configs/sampler/ddim.yaml
    net = ddpm_lab.UNet(in_channels=1, image_size=28, base_channels=32, channel_mults=(1, 2, 2),
                        attention_resolutions=(7,))
    x = ddpm_lab.generate(net, diffusion, 16, sampler=sampler, seed=0)  # (16, 1, 28, 28) in [-1, 1]

    net, diffusion, sampler = ddpm_lab.load_model("outputs/train/<run>/checkpoints/last.ckpt")  # EMA weights

Any callable ``model(x_t, t) -> prediction`` (t an integer tensor of shape (batch,)) can stand in for ``net``.
"""

from ddpm_lab.artifacts.trained_model import LoadedModel, load_model
from ddpm_lab.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    EDMDiffusion,
    GaussianDiffusion,
    Sampler,
    SampleStep,
    generate,
    make_betas,
    make_sampler,
)
from ddpm_lab.models import UNet

__version__ = "0.2.0"


__all__ = [
    "GaussianDiffusion",
    "EDMDiffusion",
    "SampleStep",
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverSampler",
    "LoadedModel",
    "generate",
    "load_model",
    "make_sampler",
    "make_betas",
    "UNet",
    "__version__",
]
