"""Conversions between the model's [−1, 1] floats and uint8 pictures, and grid PNGs. Plain PyTorch."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid
from torchvision.io import write_png


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [−1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [−1, 1] → uint8 [0, 255], clamped."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) images in [−1, 1] → one (C', H', W') uint8 grid, near-square unless ``nrow`` is given."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(to_uint8(images).cpu(), nrow=nrow, padding=padding, pad_value=255)
    return grid[:1] if images.shape[1] == 1 else grid


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a (C, H, W) uint8 image as PNG, creating the folder; writes to a temp file first, then renames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    write_png(image.cpu(), str(tmp))
    tmp.replace(path)
    return path
