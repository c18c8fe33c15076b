"""Denoising networks, plain PyTorch: ``net(x_t, t) -> prediction``."""

from ddpm_lab.models.unet import UNet

__all__ = ["UNet"]
