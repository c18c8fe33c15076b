"""Counting a network's floating-point work, once, with torch's ``FlopCounterMode`` (plain PyTorch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# A training step runs the forward pass and a backward pass that costs about twice as much (Kaplan et al., 2020).
TRAIN_FLOPS_PER_FORWARD = 3


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def forward_flops_per_image(net: nn.Module, shape: Sequence[int], batch: int = 2) -> float:
    """FLOPs of one forward pass per image of ``shape`` (C, H, W): counted on a batch of zeros, divided by it.

    Runs on the network's device and dtype; the network is put back in its own train/eval mode afterwards.
    Only what FlopCounterMode counts (matrix products, convolutions, attention) is included: norms and
    activations are a few percent of a U-Net's work and are left out, as in the usual MFU accounting.
    """
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros((batch, *shape), device=device, dtype=dtype)
    t = torch.zeros(batch, device=device, dtype=torch.long)
    was_training = net.training
    net.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            net(x, t)
    finally:
        net.train(was_training)
    return counter.get_total_flops() / batch


def train_flops_per_image(net: nn.Module, shape: Sequence[int]) -> float:
    """FLOPs of one training step (forward + backward) per image: 3 × the forward pass."""
    return TRAIN_FLOPS_PER_FORWARD * forward_flops_per_image(net, shape)
