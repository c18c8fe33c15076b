"""Figures of the diffusion process and of its scores: schedule plots, labelled image strips over t, the
variational bound's terms, FID against the guidance scale and against the number of model evaluations.

Figures are plain ``matplotlib.figure.Figure`` objects drawn by the Agg canvas, so nothing here touches
pyplot's global state or needs a display. No Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.images import to_uint8

# name → (axis title, y scale) of each curve :func:`schedule_curves` returns.
CURVES: dict[str, tuple[str, str]] = {
    "beta": ("β_t", "log"),
    "alpha_bar": ("ᾱ_t = ∏ (1 − β_s)", "linear"),
    "sqrt_alpha_bar": ("√ᾱ_t (signal scale)", "linear"),
    "log_snr": ("log-SNR = log ᾱ_t / (1 − ᾱ_t)", "linear"),
}


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


def schedule_figure(
    schedules: Mapping[str, torch.Tensor], curves: Sequence[str] = tuple(CURVES), title: str = ""
) -> Figure:
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
def strip_figure(
    frames: Sequence[torch.Tensor], titles: Sequence[str], suptitle: str = "", cell: float = 1.2
) -> Figure:
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
            ax.imshow(
                img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize="small")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def bound_terms_figure(
    timesteps: Sequence[int], terms: Sequence[float], decoder: float, prior: float, num_timesteps: int, title: str = ""
) -> Figure:
    """The terms of the variational bound against t, bits/dim on a log axis (Nichol & Dhariwal, 2021, Fig. 2):
    the mean L_t at each evaluated t, the decoder L_0 at t = 0 and the prior L_T at t = T."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    floor = 1e-12  # a log axis cannot show 0 (an exact term)
    ax.plot(list(timesteps), np.maximum(np.asarray(terms, dtype=float), floor), label="L_t (mean over images)")
    ax.scatter([0], [max(decoder, floor)], color="C1", zorder=3, label=f"L_0 decoder = {decoder:.3g}")
    ax.scatter([num_timesteps], [max(prior, floor)], color="C2", zorder=3, label=f"L_T prior = {prior:.2g}")
    ax.set_yscale("log")
    ax.set_xlabel("diffusion step t")
    ax.set_ylabel("loss term (bits/dim)")
    ax.set_title(title or "terms of the variational bound")
    ax.legend(fontsize="small")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG (atomically), creating the folder."""
    path = Path(path)
    with atomic_write(path, durable=False) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


# ------------------------------------------------------------------------------------------- guidance
def guidance_figure(rows: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """FID against the guidance scale w, one point per row (``guidance``, ``fid``, ``n_fake``), with the class
    accuracy on a second axis when the rows have it (``features=classifier``)."""
    rows = sorted(rows, key=lambda r: r["guidance"])
    w = [r["guidance"] for r in rows]
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(w, [r["fid"] for r in rows], "o-", color="tab:blue", label="FID")
    for r in rows:
        ax.annotate(
            f"n={r['n_fake']}", (r["guidance"], r["fid"]), fontsize="x-small", xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("guidance scale w (0: unconditional, 1: conditional)")
    ax.set_ylabel("FID", color="tab:blue")
    ax.grid(alpha=0.3)
    if all("class_accuracy" in r for r in rows):
        acc = ax.twinx()
        acc.plot(w, [100 * r["class_accuracy"] for r in rows], "s--", color="tab:orange")
        acc.set_ylabel("class accuracy (%)", color="tab:orange")
        acc.set_ylim(0, 100)
    fig.suptitle(title or "FID vs classifier-free guidance", fontsize="medium")
    return fig


# ------------------------------------------------------------------------------------------- sampler sweeps
def nfe_ticks(values: Sequence[float], gap: float = 1.15) -> list[float]:
    """The NFE values to label on a log axis: round ones first (multiples of 10, then 5), and none within a factor
    ``gap`` of one already kept, so Heun's 2N − 1 (19, 49, 99) beside 20, 50, 100 do not print over each other."""
    kept: list[float] = []
    for v in sorted(set(values), key=lambda v: (v % 10 != 0, v % 5 != 0, v)):
        if all(max(v, k) / min(v, k) >= gap for k in kept):
            kept.append(v)
    return sorted(kept)


def fid_vs_nfe_figure(series: Mapping[str, Sequence[tuple[float, float, float | None]]]) -> Figure:
    """FID against NFE (model evaluations per image, log axis), one line per named series of
    (NFE, FID, seconds per image) points; each point is labelled with its wall time per image when known."""
    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in series.items():
        nfe, fid, seconds = zip(*sorted(points, key=lambda p: p[:2]))
        ax.plot(nfe, fid, marker="o", label=label)
        for x, y, s in zip(nfe, fid, seconds):
            if s is not None:
                ax.annotate(f"{s * 1e3:.3g} ms/img", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xticks(nfe_ticks([p[0] for points in series.values() for p in points]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("NFE (model evaluations per image)")
    ax.set_ylabel("FID")
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
