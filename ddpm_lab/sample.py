"""Sampling a trained model: ``python -m ddpm_lab.sample ckpt=PATH [n=64] [sampler=…] [seed=0]``.

Class-conditional checkpoints also take ``class=7`` / ``class=cat`` / ``class=[cat,dog]``, ``per_class=8`` (a named
row per class in grid.png, one folder per class) and ``guidance=3`` (classifier-free guidance w, 1: conditional).

``sample(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import WEIGHTS, LoadedModel, checkpoint_file, load_model
from ddpm_lab.artifacts.figures import save_figure, strip_figure
from ddpm_lab.artifacts.images import image_grid, labelled_grid, refuse_existing, save_gif, save_png, to_uint8
from ddpm_lab.config import build, check_sampler, config_dir, pick_device
from ddpm_lab.config.checks import check_common, check_integer
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.diffusion import evenly_spaced, fit_timesteps, generate_batches
from ddpm_lab.errors import ConfigError, check_choice, check_list, check_number, user_errors

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """The settings of ``sample`` itself, before the checkpoint is even read."""
    check_common(cfg)  # ckpt given, paths.output_root, seed
    for key in ("n", "batch_size", "strip_n", "gif_n", "gif_frames", "gif_ms"):
        check_integer(cfg, key, low=1)  # stored back as an int: n=64.0 works
    check_list(cfg.timesteps, "timesteps", int, low=0, example="[999,500,0]")
    check_choice(cfg.weights, "weights", WEIGHTS)
    pick_device(str(cfg.device))
    check_integer(cfg, "per_class", low=1, optional=True)
    check_number(cfg.get("guidance"), "guidance", float, optional=True)
    check_number(cfg.get("guidance_rescale", 0.0), "guidance_rescale", float, 0, 1)


def class_labels(cfg: DictConfig, model: LoadedModel) -> tuple[list[int] | None, torch.Tensor | None]:
    """(the classes asked for, one label per image) from ``class``/``per_class``/``guidance``; (None, None) for
    unconditional samples. Refuses, in one line, what the checkpoint cannot do (before any sampling)."""
    asked, per_class, guidance = cfg.get("class"), cfg.get("per_class"), cfg.get("guidance")
    if not model.num_classes:
        given = [
            f"{k}={v}" for k, v in (("class", asked), ("per_class", per_class), ("guidance", guidance)) if v is not None
        ]
        if given:
            raise ConfigError(
                f"{given[0]} needs a class-conditional checkpoint, but {model.path} is unconditional (trained with "
                "conditioning=none): leave out class, per_class and guidance, or train with conditioning=class"
            )
        return None, None
    values = list(asked) if isinstance(asked, (ListConfig, list, tuple)) else [asked]
    if asked is not None and not values:
        raise ConfigError("class is an empty list: name at least one class, e.g. class=[0,1]")
    classes = [model.class_index(v) for v in values] if asked is not None else None
    if classes is None and per_class is not None:
        classes = list(range(model.num_classes))
    if classes is None:
        if guidance is not None and float(guidance) != 1.0:
            raise ConfigError(
                f"guidance={guidance} needs classes to guide towards: add class=<index or name> or per_class=<N>"
            )
        return None, None
    if per_class is not None:
        return classes, torch.tensor(classes).repeat_interleave(int(per_class))
    return classes, torch.tensor(classes).repeat(-(-int(cfg.n) // len(classes)))[: int(cfg.n)]


def folder_names(names: Sequence[str]) -> list[str]:
    """A safe, distinct folder name per class name (``index_name`` where two names would collide)."""
    safe = [re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "class" for name in names]
    return [s if safe.count(s) == 1 else f"{i:03d}_{s}" for i, s in enumerate(safe)]


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
    classes, labels = class_labels(cfg, model)
    n = int(cfg.n) if labels is None else len(labels)
    guidance = 1.0 if cfg.get("guidance") is None else float(cfg.guidance)
    visited = sampler.timesteps(T)
    log.info("%s at step %d, %s on %s, sampler %r", model.path, model.global_step, model.diffusion, device, sampler)
    if classes is not None:
        names = model.class_names or [str(c) for c in range(model.num_classes)]
        log.info("classes %s, guidance w=%g", ", ".join(names[c] for c in classes), guidance)

    # Frames: x_t entering each chosen step, the final column being the output x_0 itself.
    strip_ts = [t for t in fit_timesteps(list(cfg.timesteps), T, visited) if t != visited[-1]]
    gif_ts = evenly_spaced(visited, int(cfg.gif_frames) - 1)
    parts, first = [], None
    for batch in generate_batches(
        model.net,
        model.diffusion,
        n,
        sampler=sampler,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        device=device,
        keep=set(strip_ts) | set(gif_ts),
        progress=True,
        labels=labels,
        guidance=guidance,
        guidance_rescale=float(cfg.get("guidance_rescale", 0.0)),
    ):
        parts.append(batch.images.cpu())
        first = first or batch  # the kept frames come from the first batch
    images = torch.cat(parts)

    per_class = cfg.get("per_class")
    if per_class is not None and classes is not None:  # a named row per class, a folder per class
        names = model.class_names or [str(c) for c in range(model.num_classes)]
        rows = images.view(len(classes), int(per_class), *images.shape[1:])
        save_png(labelled_grid(rows, [names[c] for c in classes]), outputs["grid.png"])
        folders = folder_names(names)
        files = [outputs["samples"] / folders[int(y)] / f"{i:05d}.png" for i, y in enumerate(labels)]
    else:
        save_png(image_grid(images), outputs["grid.png"])
        files = [outputs["samples"] / f"{i:05d}.png" for i in range(len(images))]
    for image, file in zip(images, files, strict=True):
        save_png(image_grid(image[None], padding=0), file)
    # NHWC uint8 under arr_0, the layout of OpenAI's guided-diffusion evaluation suite; class labels (int64) under
    # "labels" and the model's class names under "class_names" when the samples have classes.
    extra = {} if labels is None else {"labels": labels.numpy(), "class_names": np.array(model.class_names or [])}
    with atomic_write(outputs["samples.npz"], durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, to_uint8(images).permute(0, 2, 3, 1).numpy(), **extra)
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
