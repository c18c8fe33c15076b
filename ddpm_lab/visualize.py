"""Seeing the forward process without a checkpoint: ``python -m ddpm_lab.visualize [dataset=…] [schedule=…]``;
``html=true`` adds the interactive explorer page (``ckpt=`` adds the model's x̂_0 and the reverse process).

``visualize(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.artifacts.checkpoint import checkpoint_file, load_model
from ddpm_lab.artifacts.explorer import explorer_frames, save_explorer
from ddpm_lab.artifacts.figures import save_figure, schedule_figure, strip_figure
from ddpm_lab.artifacts.images import image_grid, refuse_existing, save_gif
from ddpm_lab.config import build, config_dir
from ddpm_lab.config.checks import check_common, check_integer
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.data import first_images
from ddpm_lab.diffusion import GaussianDiffusion, evenly_spaced, fit_timesteps, randn
from ddpm_lab.diffusion.generate import image_shape
from ddpm_lab.errors import ConfigError, DatasetError, check_flag, check_list, user_errors

log = logging.getLogger(__name__)


def schedule_options(timesteps: int, selected: DictConfig | None = None) -> dict[str, torch.Tensor]:
    """β of every ``configs/schedule/*.yaml`` at ``timesteps`` steps.

    ``selected`` (the run's schedule, with its overrides) replaces the option of the same name.
    """
    schedules: dict[str, torch.Tensor] = {}
    for path in sorted(Path(config_dir(), "schedule").glob("*.yaml")):
        node = OmegaConf.load(path)
        if selected is not None and node.get("name") == selected.get("name"):
            node = selected
        schedules[path.stem] = build("schedule", node, timesteps=timesteps, warn=False)
    return schedules


def check(cfg: DictConfig) -> None:
    """The settings of ``visualize``, its schedule and its dataset, before any image is read or file written."""
    check_common(cfg)  # dataset.root given, paths.output_root, seed
    for key in ("n_images", "gif_frames", "gif_ms", "html_frames"):
        check_integer(cfg, key, low=1)  # stored back as an int: n_images=4.0 works
    check_list(cfg.timesteps, "timesteps", int, low=0, example="[0,100,999]")
    check_flag(cfg.html, "html")
    if cfg.ckpt is not None:
        if not cfg.html:
            raise ConfigError("ckpt= is read by the HTML explorer only: add html=true (or leave ckpt out)")
        checkpoint_file(cfg.ckpt)
    build("dataset", cfg.dataset)  # the data module's constructor checks dataset.* values


def visualize(cfg: DictConfig) -> dict[str, Path]:
    """Write the schedule comparison, the forward strip and the forward GIF (and with ``html``, the explorer page)
    into ``cfg.paths.output_dir``. With ``ckpt`` everything uses the checkpoint's schedule."""
    check(cfg)
    out_dir = Path(cfg.paths.output_dir)
    names = ("schedules.png", "forward_strip.png", "forward.gif") + (("explorer.html",) if cfg.html else ())
    outputs = {name: out_dir / name for name in names}
    refuse_existing(list(outputs.values()))
    model = load_model(cfg.ckpt) if cfg.ckpt is not None else None
    diffusion = model.diffusion if model is not None else GaussianDiffusion(build("schedule", cfg.schedule))
    T = diffusion.num_timesteps
    strip_ts = fit_timesteps(list(cfg.timesteps), T)

    schedules = schedule_options(T, cfg.schedule)
    # The images first: a dataset that cannot be read stops the launch before it writes anything.
    datamodule = build("dataset", cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    x0 = first_images(datamodule, int(cfg.n_images))
    if x0 is None:
        raise DatasetError(f"dataset {cfg.dataset._target_} served no images to show: check dataset.root")
    if model is not None and tuple(x0.shape[1:]) != image_shape(model.net):
        raise ConfigError(
            f"the dataset serves {tuple(x0.shape[1:])} images but the model of {cfg.ckpt} takes "
            f"{image_shape(model.net)} (C, H, W): choose its dataset, dataset.image_size and dataset.channels"
        )
    save_figure(schedule_figure(schedules, title=f"noise schedules, T={T}"), outputs["schedules.png"])
    noise = randn(x0.shape, torch.Generator().manual_seed(int(cfg.seed)), "cpu")

    def x_t(t: int) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with the same ε at every t."""
        return diffusion.q_sample(x0, torch.full((len(x0),), t), noise)

    stored = model.config.get("schedule", {}) if model is not None else cfg.schedule
    name = stored.get("name", "schedule")
    fig = strip_figure(
        [x_t(t) for t in strip_ts],
        [f"t={t}" for t in strip_ts],
        suptitle=f"forward process q(x_t | x_0), {name}, T={T}",
    )
    save_figure(fig, outputs["forward_strip.png"])
    gif_ts = evenly_spaced(list(range(T)), int(cfg.gif_frames))
    save_gif([image_grid(x_t(t), nrow=len(x0)) for t in gif_ts], outputs["forward.gif"], duration_ms=int(cfg.gif_ms))
    if cfg.html:
        html_ts = evenly_spaced(list(range(T)), int(cfg.html_frames))
        frames = explorer_frames(diffusion, x0, noise, html_ts, model.net if model else None, seed=int(cfg.seed))
        source = f"model of {Path(cfg.ckpt).name} (step {model.global_step})" if model else name
        save_explorer(frames, diffusion.betas, outputs["explorer.html"], title=f"diffusion over t: {source}, T={T}")
    return outputs


@entry_point("visualize")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="visualize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        paths = visualize(cfg)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
