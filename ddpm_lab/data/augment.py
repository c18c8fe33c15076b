"""Non-leaky augmentation (Karras et al., 2022, EDM, appendix F.2), reduced to what small datasets need: horizontal
flips, integer translations and, optionally, quarter turns, each applied to an image with probability p, and the
parameters of what was applied returned as a label vector per image. The network gets the labels as conditioning
(``UNet(..., augment_labels=...)``), so it learns augmented images as a separate task; sampling passes no labels
(all zeros: nothing applied), so it draws un-augmented images. Plain PyTorch, on whatever device the batch is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_dim", "augment_images", "max_shift"]


def augment_dim(rotate: bool) -> int:
    """Length of the label vector: flip, x shift, y shift, and with ``rotate`` cos(kπ/2) − 1, sin(kπ/2)."""
    return 5 if rotate else 3


def max_shift(size: int) -> int:
    """The largest translation, in pixels, of an image side ``size``: 1/8 of it (EDM's), at least one pixel."""
    return max(1, round(size / 8))


def shift(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image moved right by ``dx`` and down by ``dy`` pixels (integers in [−pad, pad]), the uncovered border
    filled by reflection (EDM's padding: no black bars for the network to notice)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    rows = torch.arange(h, device=images.device)[None] + pad - dy[:, None]  # output row i shows input row i − dy
    cols = torch.arange(w, device=images.device)[None] + pad - dx[:, None]
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def augment_images(images: torch.Tensor, p: float, rotate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment each image of an (N, C, H, W) batch: flip, then (``rotate``) a quarter turn, then a translation,
    each with probability ``p`` on its own. Returns the images and their (N, :func:`augment_dim`) float labels.

    Labels: flip ∈ {0, 1}; quarter turns k ∈ {1, 2, 3} (counter-clockwise) as (cos(kπ/2) − 1, sin(kπ/2)); a shift
    (dx, dy), uniform integers in [−s, s] with s = :func:`max_shift`, as (dx/s, dy/s). An untouched image has
    all-zero labels. Random numbers come from the global torch generator of the batch's device (seeded and
    restored with the run), and ``p = 0`` draws none.
    """
    n, _, h, w = images.shape
    labels = torch.zeros(n, augment_dim(rotate), device=images.device)
    if p <= 0:
        return images, labels
    device = images.device

    flip = torch.rand(n, device=device) < p
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    labels[:, 0] = flip.float()
    if rotate:
        turns = torch.where(torch.rand(n, device=device) < p, torch.randint(1, 4, (n,), device=device), 0)
        turned = images
        for k in (1, 2, 3):
            turned = torch.where((turns == k)[:, None, None, None], torch.rot90(images, k, dims=(-2, -1)), turned)
        images = turned
        angle = turns.float() * (math.pi / 2)
        labels[:, 3], labels[:, 4] = torch.cos(angle).round() - 1, torch.sin(angle).round()
    s = max_shift(min(h, w))
    moved = torch.rand(n, device=device) < p
    dx = torch.where(moved, torch.randint(-s, s + 1, (n,), device=device), 0)
    dy = torch.where(moved, torch.randint(-s, s + 1, (n,), device=device), 0)
    images = shift(images, dx, dy, s)
    labels[:, 1], labels[:, 2] = dx.float() / s, dy.float() / s
    return images, labels
