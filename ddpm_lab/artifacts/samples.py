"""The files samples become: ``sample``'s grid (a named row per class), one PNG per image (a folder per class),
the ``.npz`` of OpenAI's evaluation suite, the reverse-process strip and GIF; ``evaluate``'s grid per guidance
scale. Images are (N, C, H, W) in [−1, 1] unless named uint8."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.figures import save_figure, strip_figure
from ddpm_lab.artifacts.images import image_grid, labelled_grid, save_gif, save_png, to_uint8
from ddpm_lab.diffusion.generate import Batch

# What ``python -m ddpm_lab.sample`` writes into its run folder.
SAMPLE_FILES = ("grid.png", "samples", "samples.npz", "progression.png", "reverse.gif")


def folder_names(names: Sequence[str]) -> list[str]:
    """A safe, distinct folder name per class name (``index_name`` where two names would collide)."""
    safe = [re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "class" for name in names]
    return [s if safe.count(s) == 1 else f"{i:03d}_{s}" for i, s in enumerate(safe)]


def save_grid(images: torch.Tensor, path: Path, row_names: Sequence[str] | None = None) -> None:
    """Every sample in one grid; with ``row_names``, a row per name (the images in row order, equally many each)."""
    if row_names is None:
        save_png(image_grid(images), path)
        return
    rows = images.view(len(row_names), -1, *images.shape[1:])
    save_png(labelled_grid(rows, list(row_names)), path)


def save_images(
    images: torch.Tensor, folder: Path, labels: torch.Tensor | None = None, class_names: Sequence[str] = ()
) -> None:
    """One PNG per sample: ``<folder>/<i:05d>.png``; with ``labels``, ``<folder>/<class folder>/<i:05d>.png``."""
    if labels is None:
        files = [folder / f"{i:05d}.png" for i in range(len(images))]
    else:
        folders = folder_names(class_names)
        files = [folder / folders[int(y)] / f"{i:05d}.png" for i, y in enumerate(labels)]
    for image, file in zip(images, files, strict=True):
        save_png(image_grid(image[None], padding=0), file)


def save_npz(
    images: torch.Tensor, path: Path, labels: torch.Tensor | None = None, class_names: Sequence[str] | None = None
) -> None:
    """NHWC uint8 under ``arr_0``, the layout of OpenAI's guided-diffusion evaluation suite; with ``labels``, the
    class labels (int64) under ``labels`` and the model's class names (empty: none stored) under ``class_names``."""
    extra = {} if labels is None else {"labels": labels.numpy(), "class_names": np.array(class_names or [])}
    with atomic_write(path, durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, to_uint8(images).permute(0, 2, 3, 1).numpy(), **extra)


def _frames(batch: Batch, timesteps: Sequence[int], n: int) -> list[torch.Tensor]:
    """The first ``n`` images' x_t entering each step of ``timesteps``, then their output x_0."""
    return [batch.kept[t][:n] for t in timesteps] + [batch.images[:n].cpu()]


def save_progression(batch: Batch, timesteps: Sequence[int], n: int, title: str, path: Path) -> None:
    """The strip figure of the reverse process: a row per image, a column per chosen t, the output last."""
    titles = [f"t={t}" for t in timesteps] + ["x_0 (output)"]
    save_figure(strip_figure(_frames(batch, timesteps, n), titles, suptitle=title), path)


def save_reverse_gif(batch: Batch, timesteps: Sequence[int], n: int, duration_ms: int, path: Path) -> None:
    """The reverse process as a GIF: a frame per chosen t (a grid of ``n`` images), the output last."""
    save_gif([image_grid(f) for f in _frames(batch, timesteps, n)], path, duration_ms=duration_ms)


def grid_name(guidance: float | None) -> str:
    """``evaluate``'s grid: ``samples.png``, or ``samples_guidance_<w>.png`` per scale of a conditional checkpoint."""
    return "samples.png" if guidance is None else f"samples_guidance_{guidance:g}.png"


def save_uint8_grid(images: torch.Tensor, path: Path, n: int = 64) -> None:
    """The first ``n`` of a set of uint8 samples in one grid."""
    save_png(image_grid(images[:n].float() / 127.5 - 1.0), path)
