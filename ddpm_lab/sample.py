"""Sampling a trained model: ``python -m ddpm_lab.sample ckpt=PATH [n=64] [sampler=…] [seed=0]``.

``sample(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ddpm_lab.checkpoint import load_model, pick_device
from ddpm_lab.config import config_dir, discard_fresh_run_folder
from ddpm_lab.errors import ConfigError, user_errors
from ddpm_lab.validate import validate_checkpoint_path, validate_sampler_config
from ddpm_lab.diffusion import randn
from ddpm_lab.images import image_grid, save_png, to_uint8
from ddpm_lab.plots import evenly_spaced, fit_timesteps, refuse_existing, save_figure, save_gif, strip_figure

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "ema", "raw")


def check(cfg: DictConfig) -> None:
    """Every user error in one place, before the checkpoint is even read."""
    for key in ("n", "batch_size", "strip_n", "gif_n", "gif_frames", "gif_ms"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {WEIGHTS}, got {cfg.weights!r}")


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Draw ``cfg.n`` samples from ``cfg.ckpt`` and write grid, single PNGs, npz, progression strip and GIF."""
    check(cfg)
    validate_checkpoint_path(cfg.ckpt)
    out_dir = Path(cfg.paths.output_dir)
    outputs = {name: out_dir / name for name in ("grid.png", "samples", "samples.npz", "progression.png", "reverse.gif")}
    refuse_existing(list(outputs.values()))
    device = pick_device(str(cfg.device))
    model = load_model(cfg.ckpt, device=device, weights=str(cfg.weights))
    if cfg.get("sampler") is not None:
        validate_sampler_config(cfg.sampler, model.diffusion.num_timesteps)
    sampler = instantiate(cfg.sampler) if cfg.get("sampler") is not None else model.sampler
    diffusion, net = model.diffusion, model.net
    T = diffusion.num_timesteps
    visited = sampler.timesteps(T)
    log.info("%s at step %d, %s on %s, sampler %r", model.path, model.global_step, diffusion, device, sampler)

    # Frames: x_t entering each chosen step, the final column being the output x_0 itself.
    strip_ts = [t for t in fit_timesteps(list(cfg.timesteps), T, visited) if t != visited[-1]]
    gif_ts = evenly_spaced(visited, int(cfg.gif_frames) - 1)
    keep = set(strip_ts) | set(gif_ts)
    n_keep = max(int(cfg.strip_n), int(cfg.gif_n))
    kept: dict[int, torch.Tensor] = {}

    n, batch_size = int(cfg.n), int(cfg.batch_size)
    shape = (net.in_channels, net.image_size, net.image_size)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batches = []
    progress = tqdm(total=math.ceil(n / batch_size) * len(visited), desc="sampling", unit="step")
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x = randn((min(batch_size, n - start), *shape), generator, device)
            for step in diffusion.sample_loop(net, sampler=sampler, generator=generator, x_T=x):
                if start == 0 and step.t in keep:  # x_t before this step, a few samples only
                    kept[step.t] = x[:n_keep].cpu()
                x = step.x
                progress.update()
            batches.append(x.cpu())
    progress.close()
    images = torch.cat(batches)

    save_png(image_grid(images), outputs["grid.png"])
    for i, image in enumerate(images):
        save_png(image_grid(image[None], padding=0), outputs["samples"] / f"{i:05d}.png")
    # NHWC uint8 under arr_0, the layout of OpenAI's guided-diffusion evaluation suite.
    np.savez(outputs["samples.npz"], to_uint8(images).permute(0, 2, 3, 1).numpy())
    first = batches[0]  # the batch the kept frames come from
    strip = [kept[t][: cfg.strip_n] for t in strip_ts] + [first[: cfg.strip_n]]
    titles = [f"t={t}" for t in strip_ts] + ["x_0 (output)"]
    save_figure(strip_figure(strip, titles, suptitle=f"reverse process, {type(sampler).__name__}, {len(visited)} steps"), outputs["progression.png"])
    gif_frames = [kept[t][: cfg.gif_n] for t in gif_ts] + [first[: cfg.gif_n]]
    save_gif([image_grid(f) for f in gif_frames], outputs["reverse.gif"], duration_ms=int(cfg.gif_ms))
    return outputs


@hydra.main(config_path=config_dir(), config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        paths = sample(cfg)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
