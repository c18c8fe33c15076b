"""Sampling a trained model: ``python -m ddpm_lab.sample ckpt=PATH [n=64] [sampler=…] [seed=0]``.

``sample(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import WEIGHTS, checkpoint_file, load_model
from ddpm_lab.artifacts.figures import save_figure, strip_figure
from ddpm_lab.artifacts.images import image_grid, refuse_existing, save_gif, save_png, to_uint8
from ddpm_lab.config import build, check_sampler, config_dir, pick_device
from ddpm_lab.config.checks import check_common, check_integer
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.diffusion import evenly_spaced, fit_timesteps, generate_batches
from ddpm_lab.errors import check_choice, check_list, user_errors

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """The settings of ``sample`` itself, before the checkpoint is even read."""
    check_common(cfg)  # ckpt given, paths.output_root, seed
    for key in ("n", "batch_size", "strip_n", "gif_n", "gif_frames", "gif_ms"):
        check_integer(cfg, key, low=1)  # stored back as an int: n=64.0 works
    check_list(cfg.timesteps, "timesteps", int, low=0, example="[999,500,0]")
    check_choice(cfg.weights, "weights", WEIGHTS)
    pick_device(str(cfg.device))


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Draw ``cfg.n`` samples from ``cfg.ckpt`` and write grid, single PNGs, npz, progression strip and GIF."""
    check(cfg)
    checkpoint_file(cfg.ckpt)
    out_dir = Path(cfg.paths.output_dir)
    outputs = {
        name: out_dir / name for name in ("grid.png", "samples", "samples.npz", "progression.png", "reverse.gif")
    }
    refuse_existing(list(outputs.values()))
    device = pick_device(str(cfg.device))
    model = load_model(cfg.ckpt, device=device, weights=str(cfg.weights))
    T = model.diffusion.num_timesteps
    if cfg.get("sampler") is not None:
        check_sampler(cfg.sampler, T)
    sampler = build("sampler", cfg.sampler) if cfg.get("sampler") is not None else model.sampler
    visited = sampler.timesteps(T)
    log.info("%s at step %d, %s on %s, sampler %r", model.path, model.global_step, model.diffusion, device, sampler)

    # Frames: x_t entering each chosen step, the final column being the output x_0 itself.
    strip_ts = [t for t in fit_timesteps(list(cfg.timesteps), T, visited) if t != visited[-1]]
    gif_ts = evenly_spaced(visited, int(cfg.gif_frames) - 1)
    parts, first = [], None
    for batch in generate_batches(
        model.net,
        model.diffusion,
        int(cfg.n),
        sampler=sampler,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        device=device,
        keep=set(strip_ts) | set(gif_ts),
        progress=True,
    ):
        parts.append(batch.images.cpu())
        first = first or batch  # the kept frames come from the first batch
    images = torch.cat(parts)

    save_png(image_grid(images), outputs["grid.png"])
    for i, image in enumerate(images):
        save_png(image_grid(image[None], padding=0), outputs["samples"] / f"{i:05d}.png")
    # NHWC uint8 under arr_0, the layout of OpenAI's guided-diffusion evaluation suite.
    with atomic_write(outputs["samples.npz"], durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, to_uint8(images).permute(0, 2, 3, 1).numpy())
    strip = [first.kept[t][: cfg.strip_n] for t in strip_ts] + [first.images[: cfg.strip_n].cpu()]
    titles = [f"t={t}" for t in strip_ts] + ["x_0 (output)"]
    save_figure(
        strip_figure(strip, titles, suptitle=f"reverse process, {type(sampler).__name__}, {len(visited)} steps"),
        outputs["progression.png"],
    )
    gif_frames = [first.kept[t][: cfg.gif_n] for t in gif_ts] + [first.images[: cfg.gif_n].cpu()]
    save_gif([image_grid(f) for f in gif_frames], outputs["reverse.gif"], duration_ms=int(cfg.gif_ms))
    return outputs


@entry_point("sample")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        paths = sample(cfg)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
