"""Sampling a trained model: ``python -m ddpm_lab.sample ckpt=PATH [n=64] [sampler=…] [seed=0]``.

``devices=2`` (GPUs, or CPU processes) and ``num_nodes=`` share the work out: the same files as one device.
Class-conditional checkpoints also take ``class=7`` / ``class=cat`` / ``class=[cat,dog]``, ``per_class=8`` (a named
row per class in grid.png, one folder per class) and ``guidance=3`` (classifier-free guidance w, 1: conditional).

``sample_settings(cfg)`` (``ddpm_lab.config.settings``) parses the settings once, ``sample(cfg)`` does
the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from ddpm_lab.artifacts.checkpoint import checkpoint_file
from ddpm_lab.artifacts.images import refuse_existing
from ddpm_lab.artifacts.samples import (
    SAMPLE_FILES,
    save_grid,
    save_images,
    save_npz,
    save_progression,
    save_reverse_gif,
)
from ddpm_lab.artifacts.trained_model import LoadedModel, load_model
from ddpm_lab.config import check_sampler, config_dir
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.guidance import class_labels
from ddpm_lab.config.hydra_callbacks import is_multirun, multirun_job
from ddpm_lab.config.processes import start_ranks
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.config.settings import SampleSettings, sample_settings
from ddpm_lab.diffusion import Batch, evenly_spaced, fit_timesteps, generate_batches
from ddpm_lab.errors import user_errors

log = logging.getLogger(__name__)


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Draw ``n`` samples from ``ckpt`` and write grid, single PNGs, npz, progression strip and GIF.

    With ``devices``/``num_nodes`` each process draws whole batches of the images (each from its own seed) and
    rank 0 writes them: the files of one device. Returns what was written (on the other ranks: nothing)."""
    s = sample_settings(cfg)
    checkpoint_file(s.ckpt)
    out_dir = Path(cfg.paths.output_dir)  # the run folder Hydra made (it resolves only inside a run)
    outputs = {name: out_dir / name for name in SAMPLE_FILES}
    refuse_existing(list(outputs.values()))
    model = load_model(s.ckpt, device="cpu", weights=s.weights)
    T = model.diffusion.num_timesteps
    sampler = model.sampler if s.sampler is None else check_sampler(s.sampler, T, process=model.diffusion)
    classes, labels = class_labels(s.classes, s.per_class, s.guidance, s.n, model, s.guidance_rescale)
    guidance = 1.0 if s.guidance is None else float(s.guidance)
    visited = sampler.visited(model.diffusion)
    # Frames: x_t entering each chosen step, the final column being the output x_0 itself.
    strip_ts = [t for t in fit_timesteps(s.timesteps, T, visited) if t != visited[-1]]
    gif_ts = evenly_spaced(visited, s.gif_frames - 1)
    n = s.n if labels is None else len(labels)

    ranks = start_ranks(s.processes)  # every check is done: the other processes start here
    model.net.to(ranks.device)
    where = f"{ranks.device}" + (f", {ranks.world} processes" if ranks.world > 1 else "")
    log.info("%s at step %d, %s on %s, sampler %r", model.path, model.global_step, model.diffusion, where, sampler)
    if classes is not None:
        log.info("classes %s, guidance w=%g", ", ".join(model.class_titles[c] for c in classes), guidance)
    share = ranks.share(n, s.batch_size)  # whole batches: batch 0, whose frames the strip and GIF show, on rank 0
    parts, first = [], None
    batches = generate_batches(  # a generator: nothing is drawn (or checked) before the loop asks
        model.net,
        model.diffusion,
        len(share),
        sampler=sampler,
        seed=s.seed,
        batch_size=s.batch_size,
        device=ranks.device,
        keep=set(strip_ts) | set(gif_ts) if ranks.is_zero else (),
        progress=ranks.is_zero,
        labels=None if labels is None else labels[share.start : share.stop],
        guidance=guidance,
        guidance_rescale=s.guidance_rescale,
        indices=share,
    )
    with ranks.together():
        for batch in batches if share else ():  # a rank may have no images (fewer batches than ranks)
            parts.append(batch.images.cpu())
            first = first or batch  # the kept frames come from the first batch
    images = ranks.gather(torch.cat(parts) if parts else None, n, s.batch_size)
    title = f"reverse process, {type(sampler).__name__}, {len(visited)} steps"
    with ranks.together():  # the other ranks wait for rank 0's files, and exit with its status
        if ranks.is_zero:
            write_samples(s, model, images, labels, classes, first, (strip_ts, gif_ts, title), outputs)
    return outputs if ranks.is_zero else {}


def write_samples(
    s: SampleSettings,
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    classes: list[int] | None,
    first: Batch,
    frames: tuple[list[int], list[int], str],
    outputs: dict[str, Path],
) -> None:
    """``sample``'s files: the grid (a named row per class), one PNG per image, the npz, and the reverse process
    of the ``first`` batch (``frames``: the strip's timesteps, the GIF's, the strip's title)."""
    strip_ts, gif_ts, title = frames
    by_class = s.per_class is not None and classes is not None  # a named row per class, a folder per class
    save_grid(images, outputs["grid.png"], [model.class_titles[c] for c in classes] if by_class else None)
    save_images(images, outputs["samples"], labels if by_class else None, model.class_titles)
    save_npz(images, outputs["samples.npz"], labels, model.class_names)
    save_progression(first, strip_ts, s.strip_n, title, outputs["progression.png"])
    save_reverse_gif(first, gif_ts, s.gif_n, s.gif_ms, outputs["reverse.gif"])


@entry_point("sample")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if is_multirun():  # a mistake fails its job alone, named; the sweep goes on
        paths = multirun_job(lambda: sample(cfg)) or {}
    else:
        with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
            paths = sample(cfg)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
