"""Denoising networks, plain PyTorch: ``net(x_t, t) -> prediction``."""

from torch import nn

from ddpm_lab.models.flops import count_parameters, forward_flops_per_image, train_flops_per_image
from ddpm_lab.models.unet import UNet

# Every network a config may build, by name. What a checkpoint may build is derived from it
# (``ddpm_lab.artifacts.allow_list``): a network added here, and exported above, is one checkpoints may name.
MODELS: dict[str, type[nn.Module]] = {"unet": UNet}

__all__ = ["MODELS", "UNet", "count_parameters", "forward_flops_per_image", "train_flops_per_image"]
