"""Denoising networks, plain PyTorch: ``net(x_t, t) -> prediction``."""

from ddpm_lab.models.flops import count_parameters, forward_flops_per_image, train_flops_per_image
from ddpm_lab.models.unet import UNet

__all__ = ["UNet", "count_parameters", "forward_flops_per_image", "train_flops_per_image"]
