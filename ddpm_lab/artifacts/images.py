"""Pictures as files: [−1, 1] floats ⇄ uint8, grids and strips, PNG and GIF writing, the overwrite guard."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.errors import OutputExistsError


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
    """Write a (C, H, W) uint8 image as PNG (atomically), creating the folder."""
    path = Path(path)
    with atomic_write(path, durable=False) as tmp:
        _picture(image).save(tmp, format="PNG")
    return path


def _picture(image: torch.Tensor) -> Image.Image:
    """A (C, H, W) uint8 tensor as a PIL image (grayscale for one channel)."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def strip_grid(frames: Sequence[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Frames (each (N, C, H, W) in [−1, 1]) → one uint8 grid with a row per image and a column per frame."""
    stacked = torch.stack([f.detach().cpu().float() for f in frames], 1)  # (N, K, C, H, W)
    n, k = stacked.shape[:2]
    return image_grid(stacked.flatten(0, 1), nrow=k, padding=padding)


def labelled_grid(
    rows: torch.Tensor,
    row_labels: Sequence[str],
    column_titles: Sequence[str] | None = None,
    padding: int = 2,
    min_side: int = 24,
) -> torch.Tensor:
    """(R, K, C, H, W) images in [−1, 1] → one uint8 grid, a row per label written on its left (e.g. class names)
    and optional titles above the columns; images smaller than ``min_side`` are enlarged (nearest) to fit the text.
    """
    r, k, c, h, w = rows.shape
    if len(row_labels) != r or (column_titles is not None and len(column_titles) != k):
        raise ValueError(f"{r} rows x {k} columns but {len(row_labels)} row labels and {column_titles!r} titles")
    scale = max(1, math.ceil(min_side / h))
    images = rows.flatten(0, 1).float().cpu()
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = _picture(image_grid(images, nrow=k, padding=padding)).convert("RGB")
    font = ImageFont.load_default(size=12)
    measure = ImageDraw.Draw(grid)
    label_w = 2 * padding + max(int(measure.textlength(str(t), font=font)) for t in row_labels)
    title_h = 16 if column_titles else 0
    canvas = Image.new("RGB", (label_w + grid.width, title_h + grid.height), "white")
    canvas.paste(grid, (label_w, title_h))
    draw, cell_h, cell_w = ImageDraw.Draw(canvas), h * scale + padding, w * scale + padding
    for i, label in enumerate(row_labels):
        draw.text(
            (padding, title_h + padding + i * cell_h + (h * scale) // 2),
            str(label),
            fill="black",
            font=font,
            anchor="lm",
        )
    for j, title in enumerate(column_titles or []):
        x = label_w + padding + j * cell_w + (w * scale) // 2
        draw.text((x, title_h // 2), str(title), fill="black", font=font, anchor="mm")
    out = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()
    return out[:1] if c == 1 else out


def save_gif(
    frames: Sequence[torch.Tensor],
    path: str | Path,
    duration_ms: int = 80,
    hold_last_ms: int = 1500,
    min_side: int = 128,
) -> Path:
    """Write uint8 (C, H, W) frames as a looping GIF, upscaled (nearest) so the short side is ≥ ``min_side``."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    scale = max(1, -(-min_side // min(frames[0].shape[1:])))
    pictures = []
    for frame in frames:
        picture = _picture(frame)
        pictures.append(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    path = Path(path)
    with atomic_write(path, durable=False) as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False
        )
    return path


def refuse_existing(paths: Sequence[Path]) -> None:
    """Raise before any work when an output file is already there: nothing gets overwritten."""
    taken = [str(p) for p in paths if Path(p).exists()]
    if taken:
        raise OutputExistsError(f"refusing to overwrite {taken[0]}: choose another output folder (hydra.run.dir=...)")
