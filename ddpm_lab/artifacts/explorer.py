"""A self-contained HTML page to explore the diffusion over t: a slider, and at each chosen t the images of that
t side by side (x_t, the model's x̂_0, ...) with the schedule's ᾱ_t and SNR_t = ᾱ_t / (1 − ᾱ_t).

One file, no server, no internet: images are PNG ``data:`` URIs, the script and style are inline. The page
shows the frame named by its URL fragment (``page.html#t=500``, the nearest chosen t) and writes the fragment
back as the slider moves, so a view can be bookmarked. No Lightning, no Hydra.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.figures import schedule_curves
from ddpm_lab.artifacts.images import image_grid
from ddpm_lab.diffusion import DDPMSampler, Denoiser, DiffusionProcess, generate_batches

DISPLAY_WIDTH = 320  # least CSS width of an image row (small images are scaled up, pixelated), up to 4x, 640 px
CURVE_SIZE = (320, 120)  # width, height of the ᾱ_t curve in CSS pixels


@dataclass(frozen=True)
class Frame:
    """One chosen t: ``panels`` maps a caption to a (C, H, W) uint8 image (C = 1 or 3)."""

    t: int
    panels: Mapping[str, torch.Tensor]


def png_data_uri(image: torch.Tensor) -> str:
    """A (C, H, W) uint8 image as a ``data:image/png;base64,...`` URI."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _curve_points(alpha_bar: np.ndarray) -> str:
    """SVG polyline points of ᾱ_t over t = 0 .. T−1 (y = 1 at the top)."""
    width, height = CURVE_SIZE
    xs = np.linspace(0, width, len(alpha_bar)) if len(alpha_bar) > 1 else np.zeros(1)
    return " ".join(f"{x:.1f},{(1 - a) * height:.1f}" for x, a in zip(xs, alpha_bar))


def _display_width(image: torch.Tensor) -> int:
    return max(DISPLAY_WIDTH, min(4 * image.shape[-1], 2 * DISPLAY_WIDTH))


def _frame_html(frame: Frame, alpha_bar: float, T: int) -> str:
    snr = alpha_bar / (1 - alpha_bar) if alpha_bar < 1 else float("inf")
    log_snr = float(np.log(snr)) if 0 < snr < float("inf") else (float("inf") if snr > 0 else float("-inf"))
    x = frame.t / max(T - 1, 1) * CURVE_SIZE[0]
    figures = "".join(
        f'<figure><img src="{png_data_uri(image)}" width="{_display_width(image)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, image in frame.panels.items()
    )
    return (
        f'<section class="frame" data-t="{frame.t}" data-x="{x:.1f}" data-y="{(1 - alpha_bar) * CURVE_SIZE[1]:.1f}" '
        f"hidden>"
        f'<p class="numbers">t = {frame.t} &nbsp; ᾱ_t = {alpha_bar:.6g} &nbsp; SNR = {snr:.6g} &nbsp; '
        f"log-SNR = {log_snr:.4g}</p>"
        f'<div class="panels">{figures}</div></section>'
    )


STYLE = """
body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }
.panels { display: flex; gap: 16px; flex-wrap: wrap; }
figure { margin: 0; } figcaption { font-size: 13px; max-width: 480px; }
img { image-rendering: pixelated; height: auto; border: 1px solid #ccc; background: white; }
input[type=range] { width: 640px; } .numbers { font-family: monospace; font-size: 15px; }
svg { background: white; border: 1px solid #ccc; overflow: visible; }
"""

# Show frame i; the fragment #t=<t> picks the nearest chosen t on load and when it changes.
SCRIPT = """
const frames = Array.from(document.querySelectorAll(".frame"));
const slider = document.getElementById("slider");
const marker = document.getElementById("marker");
function show(i) {
  frames.forEach((f, k) => { f.hidden = k !== i; });
  slider.value = i;
  marker.setAttribute("cx", frames[i].dataset.x);
  marker.setAttribute("cy", frames[i].dataset.y);
  document.getElementById("tvalue").textContent = frames[i].dataset.t;
}
function fromHash() {
  const m = /t=(\\d+)/.exec(location.hash);
  if (!m) return 0;
  const t = Number(m[1]);
  let best = 0;
  frames.forEach((f, k) => {
    if (Math.abs(f.dataset.t - t) < Math.abs(frames[best].dataset.t - t)) best = k;
  });
  return best;
}
slider.addEventListener("input", () => {
  show(Number(slider.value));
  history.replaceState(null, "", "#t=" + frames[Number(slider.value)].dataset.t);
});
window.addEventListener("hashchange", () => show(fromHash()));
show(fromHash());
"""


def explorer_page(frames: Sequence[Frame], betas: torch.Tensor, title: str) -> str:
    """The HTML page: one hidden ``<section class="frame">`` per chosen t (in the given order), a slider over them,
    the ᾱ_t curve of ``betas`` with a marker at the shown t. Works without the script too (all frames listed)."""
    if not frames:
        raise ValueError("the explorer needs at least one frame")
    alpha_bar = schedule_curves(betas)["alpha_bar"]
    T = len(alpha_bar)
    if not all(0 <= f.t < T for f in frames):
        raise ValueError(f"frame timesteps must lie in [0, {T - 1}]")
    width, height = CURVE_SIZE
    body = "".join(_frame_html(f, float(alpha_bar[f.t]), T) for f in frames)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><h2>{html.escape(title)}</h2>
<p><label>t = <span id="tvalue"></span><br>
<input id="slider" type="range" min="0" max="{len(frames) - 1}" step="1" value="0"></label></p>
<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">
<title>alpha_bar_t over t = 0 .. {T - 1}</title>
<polyline points="{_curve_points(alpha_bar)}" fill="none" stroke="#1f77b4" stroke-width="2"/>
<circle id="marker" r="5" fill="#d62728"/></svg>
<p style="font-size:12px">ᾱ_t for t = 0 .. {T - 1} (1 at the top, 0 at the bottom)</p>
{body}
<script>{SCRIPT}</script></body></html>
"""


FORWARD = "x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (dataset images)"
PREDICTED = "x̂_0: the model's x_0 from that x_t"
REVERSE = "reverse process: x_t of samples from noise (DDPM, full chain)"


@torch.no_grad()
def explorer_frames(
    diffusion: DiffusionProcess,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: Sequence[int],
    net: Denoiser | None = None,
    seed: int = 0,
) -> list[Frame]:
    """A :class:`Frame` per t: x_t of ``x0`` with the same ``noise`` at every t; with ``net`` also its x̂_0 from
    that x_t and the x_t that ancestral sampling (the full T-step chain, from ``seed``) reaches at t.

    Each panel is one row of images in [−1, 1] (``x0``: (N, C, H, W) on the network's device when ``net``).
    """
    reverse: dict[int, torch.Tensor] = {}
    if net is not None:
        (batch,) = generate_batches(
            net, diffusion, len(x0), sampler=DDPMSampler(), seed=seed, batch_size=len(x0), keep=timesteps
        )
        reverse = {t: x.cpu() for t, x in batch.kept.items()}
    frames = []
    for t in timesteps:
        tt = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
        x_t = diffusion.q_sample(x0, tt, noise)
        panels = {FORWARD: image_grid(x_t, nrow=len(x0))}
        if net is not None:
            panels[PREDICTED] = image_grid(diffusion.x0_model(net)(x_t, tt).float().clamp(-1, 1), len(x0))
            panels[REVERSE] = image_grid(reverse[t], nrow=len(x0))
        frames.append(Frame(t, panels))
    return frames


def save_explorer(frames: Sequence[Frame], betas: torch.Tensor, path: str | Path, title: str) -> Path:
    """Write :func:`explorer_page` to ``path`` atomically."""
    path = Path(path)
    with atomic_write(path, durable=False) as tmp:
        Path(tmp).write_text(explorer_page(frames, betas, title), encoding="utf-8")
    return path
