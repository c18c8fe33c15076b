"""Pictures of the diffusion process: schedule plots, image strips over t, and GIFs.

Figures are plain ``matplotlib.figure.Figure`` objects drawn by the Agg canvas, so nothing here touches
pyplot's global state or needs a display. No Lightning, no Hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ddpm_lab.images import image_grid, to_uint8

# name → (axis title, y scale) of each curve :func:`schedule_curves` returns.
CURVES: dict[str, tuple[str, str]] = {
    "beta": ("β_t", "log"),
    "alpha_bar": ("ᾱ_t = ∏ (1 − β_s)", "linear"),
    "sqrt_alpha_bar": ("√ᾱ_t (signal scale)", "linear"),
    "log_snr": ("log-SNR = log ᾱ_t / (1 − ᾱ_t)", "linear"),
}


# ------------------------------------------------------------------------------------------ timesteps
def evenly_spaced(values: Sequence[int], k: int) -> list[int]:
    """``k`` entries of ``values`` spread evenly from first to last (all of them when k ≥ len)."""
    if k >= len(values):
        return list(values)
    if k == 1:
        return [values[0]]
    return [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)]


def fit_timesteps(requested: Sequence[int], num_timesteps: int, visited: Sequence[int] | None = None) -> list[int]:
    """Adapt timesteps chosen for one T to a run: rescale when any exceeds T−1, snap to ``visited``, dedupe.

    ``[999, 800, …, 0]`` (written for T = 1000) becomes ``[49, 40, …, 0]`` for T = 50; with a respaced
    sampler each one moves to the nearest timestep the sampler really visits. Order is kept.
    """
    if not requested:
        raise ValueError("the list of timesteps is empty: give at least one t, e.g. [999,500,0]")
    if min(requested) < 0:
        raise ValueError(f"timesteps must be >= 0, got {list(requested)}")
    top = max(requested)
    scale = (num_timesteps - 1) / top if top > num_timesteps - 1 else 1.0
    out: list[int] = []
    for t in requested:
        t = round(t * scale)
        if visited:
            t = min(visited, key=lambda v: (abs(v - t), v))
        if t not in out:
            out.append(t)
    return out


# ------------------------------------------------------------------------------------------- curves
def schedule_curves(betas: torch.Tensor) -> dict[str, np.ndarray]:
    """β_t, ᾱ_t = ∏_{s≤t}(1 − β_s), √ᾱ_t and log-SNR_t = log ᾱ_t − log(1 − ᾱ_t) (−∞ where ᾱ_t = 0)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
    alpha_bar = torch.cumprod(1.0 - betas, 0)
    with np.errstate(divide="ignore"):
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
    return {
        "beta": betas.numpy(),
        "alpha_bar": alpha_bar.numpy(),
        "sqrt_alpha_bar": alpha_bar.sqrt().numpy(),
        "log_snr": log_snr.numpy(),
    }


def schedule_figure(schedules: Mapping[str, torch.Tensor], curves: Sequence[str] = tuple(CURVES), title: str = "") -> Figure:
    """One panel per curve (β_t, ᾱ_t, √ᾱ_t, log-SNR) against t, one line per named β schedule."""
    unknown = [c for c in curves if c not in CURVES]
    if unknown:
        raise ValueError(f"unknown curves {unknown}; choose from {list(CURVES)}")
    fig = Figure(figsize=(4.0 * len(curves), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    data = {name: schedule_curves(betas) for name, betas in schedules.items()}
    for ax, curve in zip(axes, curves):
        label, yscale = CURVES[curve]
        for name, values in data.items():
            ax.plot(np.arange(len(values[curve])), values[curve], label=f"{name} (T={len(values[curve])})")
        ax.set_title(label)
        ax.set_xlabel("t")
        ax.set_yscale(yscale)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------- strips
def strip_grid(frames: Sequence[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Frames (each (N, C, H, W) in [−1, 1]) → one uint8 grid with a row per image and a column per frame."""
    stacked = torch.stack([f.detach().cpu().float() for f in frames], 1)  # (N, K, C, H, W)
    n, k = stacked.shape[:2]
    return image_grid(stacked.flatten(0, 1), nrow=k, padding=padding)


def strip_figure(frames: Sequence[torch.Tensor], titles: Sequence[str], suptitle: str = "", cell: float = 1.2) -> Figure:
    """Frames as a labelled strip: a row per image, a column per frame, ``titles`` above the columns."""
    if len(frames) != len(titles):
        raise ValueError(f"{len(frames)} frames but {len(titles)} titles")
    images = torch.stack([to_uint8(f.cpu()) for f in frames], 1)  # (N, K, C, H, W)
    n, k = images.shape[:2]
    fig = Figure(figsize=(cell * k, cell * n + (0.5 if suptitle else 0.2)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, k, squeeze=False)
    for i in range(n):
        for j in range(k):
            img = images[i, j].permute(1, 2, 0).numpy()
            ax = axes[i, j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize="small")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def save_gif(frames: Sequence[torch.Tensor], path: str | Path, duration_ms: int = 80, hold_last_ms: int = 1500, min_side: int = 128) -> Path:
    """Write uint8 (C, H, W) frames as a looping GIF, upscaled (nearest) so the short side is ≥ ``min_side``."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    scale = max(1, -(-min_side // min(frames[0].shape[1:])))
    pictures = []
    for frame in frames:
        array = frame.cpu().permute(1, 2, 0).numpy()
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        pictures.append(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False)
    return path


def refuse_existing(paths: Sequence[Path]) -> None:
    """Raise before any work when an output file is already there: nothing gets overwritten."""
    taken = [str(p) for p in paths if Path(p).exists()]
    if taken:
        raise FileExistsError(f"refusing to overwrite {taken[0]}: choose another output folder (hydra.run.dir=...)")
