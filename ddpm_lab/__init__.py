"""ddpm_lab: configuration-driven DDPM diffusion models.

The math and the networks are plain PyTorch and import nothing from Lightning or Hydra::

    import torch, ddpm_lab
    betas = ddpm_lab.make_betas("cosine", timesteps=1000)             # float64 tensor of β_t
    diffusion = ddpm_lab.GaussianDiffusion(betas, prediction="eps")    # "eps" | "x0" | "v"
    sampler = ddpm_lab.make_sampler("ddim", steps=50, eta=0.0)         # same names and parameters as configs/sampler/*.yaml
    net = ddpm_lab.UNet(in_channels=1, image_size=28, base_channels=32, channel_mults=(1, 2, 2), attention_resolutions=(7,))
    x = diffusion.sample(net, shape=(16, 1, 28, 28), sampler=sampler, generator=torch.Generator().manual_seed(0))

Any callable ``model(x_t, t) -> prediction`` (t an integer tensor of shape (batch,)) can stand in for ``net``.
"""

from ddpm_lab.diffusion import GaussianDiffusion, SampleStep
from ddpm_lab.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, Sampler, make_sampler
from ddpm_lab.schedules import make_betas
from ddpm_lab.unet import UNet

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion",
    "SampleStep",
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverSampler",
    "make_sampler",
    "make_betas",
    "UNet",
    "__version__",
]
