"""Seeing the forward process without a checkpoint: ``python -m ddpm_lab.visualize [dataset=…] [schedule=…]``;
``html=true`` adds the interactive explorer page (``ckpt=`` adds the model's x̂_0 and the reverse process).

``visualize_settings(cfg)`` (``ddpm_lab.config.settings``) parses the settings once, ``visualize(cfg)`` does
the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from ddpm_lab.artifacts.explorer import explorer_frames, save_explorer
from ddpm_lab.artifacts.figures import save_figure, schedule_figure, strip_figure
from ddpm_lab.artifacts.images import image_grid, refuse_existing, save_gif
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.config import build, config_dir
from ddpm_lab.config.build import schedule_options
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.config.settings import visualize_settings
from ddpm_lab.data import first_images
from ddpm_lab.diffusion import GaussianDiffusion, evenly_spaced, fit_timesteps, randn
from ddpm_lab.diffusion.generate import image_shape
from ddpm_lab.diffusion.guidance import NO_NULL_CLASS, has_null_class
from ddpm_lab.errors import ConfigError, DatasetError, user_errors

log = logging.getLogger(__name__)


def visualize(cfg: DictConfig) -> dict[str, Path]:
    """Write the schedule comparison, the forward strip and the forward GIF (and with ``html``, the explorer page)
    into the run folder. With ``ckpt`` everything uses the checkpoint's schedule."""
    s = visualize_settings(cfg)
    out_dir = Path(cfg.paths.output_dir)  # the run folder Hydra made (it resolves only inside a run)
    names = ("schedules.png", "forward_strip.png", "forward.gif") + (("explorer.html",) if s.html else ())
    outputs = {name: out_dir / name for name in names}
    refuse_existing(list(outputs.values()))
    model = load_model(s.ckpt) if s.ckpt is not None else None
    if model is not None and model.num_classes and not has_null_class(model.net):
        raise ConfigError(f"ckpt={s.ckpt}: the explorer shows the unconditional model, but {NO_NULL_CLASS}")
    diffusion = model.diffusion if model is not None else GaussianDiffusion(build("schedule", s.schedule))
    T = diffusion.num_timesteps
    strip_ts = fit_timesteps(s.timesteps, T)

    schedules = schedule_options(T, s.schedule)
    # The images first: a dataset that cannot be read stops the launch before it writes anything.
    s.data.prepare_data()
    s.data.setup("fit")
    x0 = first_images(s.data, s.n_images)
    if x0 is None:
        raise DatasetError(f"dataset {s.dataset} served no images to show: check dataset.root")
    if model is not None and tuple(x0.shape[1:]) != image_shape(model.net):
        raise ConfigError(
            f"the dataset serves {tuple(x0.shape[1:])} images but the model of {s.ckpt} takes "
            f"{image_shape(model.net)} (C, H, W): choose its dataset, dataset.image_size and dataset.channels"
        )
    save_figure(schedule_figure(schedules, title=f"noise schedules, T={T}"), outputs["schedules.png"])
    noise = randn(x0.shape, torch.Generator().manual_seed(s.seed), "cpu")

    def x_t(t: int) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with the same ε at every t."""
        return diffusion.q_sample(x0, torch.full((len(x0),), t), noise)

    name = (model.config.get("schedule", {}) if model is not None else s.schedule).get("name", "schedule")
    fig = strip_figure(
        [x_t(t) for t in strip_ts],
        [f"t={t}" for t in strip_ts],
        suptitle=f"forward process q(x_t | x_0), {name}, T={T}",
    )
    save_figure(fig, outputs["forward_strip.png"])
    gif_ts = evenly_spaced(list(range(T)), s.gif_frames)
    save_gif([image_grid(x_t(t), nrow=len(x0)) for t in gif_ts], outputs["forward.gif"], duration_ms=s.gif_ms)
    if s.html:
        html_ts = evenly_spaced(list(range(T)), s.html_frames)
        frames = explorer_frames(diffusion, x0, noise, html_ts, model.net if model else None, seed=s.seed)
        source = f"model of {Path(s.ckpt).name} (step {model.global_step})" if model else name
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
