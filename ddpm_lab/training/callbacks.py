"""Lightning callbacks that show the model's progress in the loggers (TensorBoard, W&B, MLflow: see
``ddpm_lab.training.media``) and in the run folder.

Everything here runs on rank zero only and stays silent under ``fast_dev_run`` and the sanity check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from ddpm_lab.artifacts.figures import schedule_figure
from ddpm_lab.artifacts.images import image_grid, labelled_grid, save_png, strip_grid
from ddpm_lab.data import first_images
from ddpm_lab.diffusion import Sampler, SamplingStopped, evenly_spaced, generate, generate_batches, randn
from ddpm_lab.errors import check_number
from ddpm_lab.training.media import image_loggers, log_figure, log_hparams, log_image, log_text

log = logging.getLogger(__name__)

# Config sections whose scalar leaves are the run's hyperparameters (TensorBoard's HPARAMS table), and single keys.
HPARAM_SECTIONS = ("schedule", "diffusion", "model", "sampler", "optimizer")
HPARAM_KEYS = (
    "dataset.batch_size",
    "dataset.image_size",
    "warmup_steps",
    "seed",
    "trainer.max_steps",
    "trainer.precision",
)


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Switch ``net`` to eval for the block (dropout off), then back to what it was."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def sigterm_received(trainer: pl.Trainer | None) -> Callable[[], bool]:
    """A ``should_stop`` for ``generate_batches``: True once Lightning has seen SIGTERM."""
    return lambda: bool(getattr(trainer, "received_sigterm", False))


@contextmanager
def stop_sampling_on_sigterm() -> Iterator[None]:
    """Turn a sampling stopped by SIGTERM into Lightning's ``SIGTERMException``: the run then saves ``last.ckpt``
    at once (``PreemptionGuard``) instead of finishing a long grid while SLURM's grace period runs out."""
    try:
        yield
    except SamplingStopped as e:
        log.warning("SIGTERM: %s, to save the checkpoint first", e)
        raise SIGTERMException() from None


def sample_images(
    pl_module: pl.LightningModule,
    n: int,
    sampler: Sampler | None,
    seed: int,
    batch_size: int,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """``n`` samples in [−1, 1] (CPU) of the module's sampling weights (EMA when on), in eval mode, from ``seed``
    as ``ddpm_lab.diffusion.generate`` defines it; ``sampler`` overrides the module's own. ``labels`` and
    ``guidance``: classes and classifier-free guidance scale of a class-conditional network; ``indices``: which
    images of the seed's sequence (default ``0 … n−1``), e.g. one rank's share.

    Stops between two reverse steps with ``SIGTERMException`` when SIGTERM arrives during training."""
    net = pl_module.sampling_net
    with eval_mode(net), stop_sampling_on_sigterm():
        return generate(
            net,
            pl_module.diffusion,
            n,
            sampler=sampler or pl_module.sampler,
            seed=seed,
            batch_size=batch_size,
            device=pl_module.device,
            should_stop=sigterm_received(pl_module._trainer),
            labels=labels,
            guidance=guidance,
            indices=indices,
        )


def grid_classes(num_classes: int, seed: int, max_rows: int = 10) -> list[int]:
    """The classes a conditional sample grid shows, a row each: all of them, or a random subset fixed by ``seed``."""
    if num_classes <= max_rows:
        return list(range(num_classes))
    return sorted(torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))[:max_rows].tolist())


def class_names_of(pl_module: pl.LightningModule) -> list[str]:
    """The class names the module's stored config holds (indices as text when it holds none)."""
    dataset = (getattr(pl_module, "config", None) or {}).get("dataset") or {}
    names = dataset.get("class_names")
    count = int(getattr(pl_module, "num_classes", 0))
    return [str(x) for x in names] if isinstance(names, list) and len(names) == count else list(map(str, range(count)))


class EveryNSteps(pl.Callback):
    """Base: ``log_step`` every ``every_n_steps`` optimizer steps and once more at the end of training.

    Rank zero only, silent under ``fast_dev_run`` and the sanity check; each call's cost is logged at DEBUG.
    ``every_n_steps=0`` keeps only the final call.
    """

    def __init__(self, every_n_steps: int) -> None:
        super().__init__()
        self.every_n_steps = check_number(every_n_steps, "every_n_steps", int, low=0)
        self._last_step = -1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            try:
                self.run(trainer, pl_module)
            except SIGTERMException:
                # The cut sampling is dropped; Lightning stops once this batch's other hooks (EMA, checkpoint,
                # its logged loss) have run, so the checkpoint and a resume from it miss nothing of the step.
                pass

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.run(trainer, pl_module)

    @rank_zero_only
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        self._last_step = trainer.global_step
        start = time.perf_counter()
        with torch.no_grad(), eval_mode(pl_module.sampling_net):
            self.log_step(trainer, pl_module, trainer.global_step)
        log.debug("%s at step %d took %.3f s", type(self).__name__, trainer.global_step, time.perf_counter() - start)

    def log_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        raise NotImplementedError


class SampleGrid(EveryNSteps):
    """Every ``every_n_steps`` optimizer steps (and at the end), sample ``n`` images from fixed noise.

    The grid goes to every image logger as ``samples/grid`` (one tag over training: use the step slider) and to
    ``<run>/samples/step_XXXXXXX.png``. Same seed every time, so grids differ only by the weights, which
    are ``pl_module.sampling_net`` (the EMA copy when EMA is on).

    A class-conditional run's grid has one row per class, named (at most ``max_rows``: a random subset fixed by
    the seed when there are more), sampled with guidance ``guidance``; ``samples/guidance`` (and
    ``<run>/samples/guidance_XXXXXXX.png``) shows one image per row class from the same noise at each scale of
    ``guidance_strip``.

    Args:
        every_n_steps: sampling interval; 0 turns periodic grids off (the final one stays).
        n: images per grid.
        seed: seed of x_T and of the sampler's noise.
        sampler: overrides the module's sampler (e.g. a respaced DDPM to keep grids cheap).
        out_dir: where PNGs go; defaults to the trainer's ``default_root_dir``.
        guidance: classifier-free guidance scale w of a conditional run's grid (1: purely conditional).
        guidance_strip: the scales of a conditional run's guidance strip.
        max_rows: classes (rows) in a conditional run's grid.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        n: int = 64,
        seed: int = 0,
        sampler: Sampler | None = None,
        out_dir: str | None = None,
        guidance: float = 3.0,
        guidance_strip: Sequence[float] = (0.0, 1.0, 3.0, 5.0),
        max_rows: int = 10,
    ) -> None:
        super().__init__(every_n_steps)
        self.n, self.seed = check_number(n, "callbacks.sample_grid.n", int, low=1), seed
        self.sampler = sampler
        self.out_dir = out_dir
        self.guidance = check_number(guidance, "callbacks.sample_grid.guidance", float)
        self.guidance_strip = [check_number(w, "callbacks.sample_grid.guidance_strip", float) for w in guidance_strip]
        self.max_rows = check_number(max_rows, "callbacks.sample_grid.max_rows", int, low=1)

    def sample(self, pl_module: pl.LightningModule) -> torch.Tensor:
        return sample_images(pl_module, self.n, self.sampler, self.seed, batch_size=self.n)

    def log_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        conditional = bool(getattr(pl_module, "num_classes", 0))
        grid = self.class_grid(pl_module) if conditional else image_grid(self.sample(pl_module))
        log_image(trainer, "samples/grid", grid, step)
        folder = Path(self.out_dir or trainer.default_root_dir) / "samples"
        save_png(grid, folder / f"step_{step:07d}.png")
        log.info("sample grid at step %d: %s", step, folder / f"step_{step:07d}.png")
        if conditional and self.guidance_strip:
            strip = self.guidance_grid(pl_module)
            log_image(trainer, "samples/guidance", strip, step)
            save_png(strip, folder / f"guidance_{step:07d}.png")

    def class_grid(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """A row per class (named), ``n // rows`` samples each, guided with ``guidance``."""
        classes = grid_classes(pl_module.num_classes, self.seed, self.max_rows)
        cols = max(1, self.n // len(classes))
        labels = torch.tensor(classes).repeat_interleave(cols)
        images = sample_images(pl_module, len(labels), self.sampler, self.seed, len(labels), labels, self.guidance)
        names = class_names_of(pl_module)
        return labelled_grid(images.view(len(classes), cols, *images.shape[1:]), [names[c] for c in classes])

    def guidance_grid(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """One image per row class (rows) at each guidance scale (columns), all from the same noise."""
        classes = grid_classes(pl_module.num_classes, self.seed, self.max_rows)
        labels = torch.tensor(classes)
        columns = [
            sample_images(pl_module, len(labels), self.sampler, self.seed, len(labels), labels, w)
            for w in self.guidance_strip
        ]
        names = class_names_of(pl_module)
        titles = [f"w={w:g}" for w in self.guidance_strip]
        return labelled_grid(torch.stack(columns, 1), [names[c] for c in classes], titles)


class DiffusionStrips(EveryNSteps):
    """Strips of the diffusion in the image loggers, a row per image and a column per timestep (step slider).

    - ``diffusion/denoising``: x_t of ``n`` samples from fixed noise, from t = T−1 down to the output x_0;
    - ``diffusion/x0_pred``: the model's x̂_0 from the forward strip's x_t, one column per t;
    - ``diffusion/forward`` (once; it does not depend on the weights): ``n`` real validation images
      noised to x_t with fixed ε at ``frames`` timesteps spread over [0, T−1].

    Args:
        every_n_steps: logging interval; 0 keeps only the strips at the end of training.
        n: images (rows) per strip.
        frames: columns per strip.
        seed: seed of x_T, of the sampler's noise and of the forward strip's ε.
        sampler: overrides the module's sampler for the denoising strip (a respaced chain keeps it cheap).
    """

    def __init__(
        self, every_n_steps: int = 1000, n: int = 4, frames: int = 8, seed: int = 0, sampler: Sampler | None = None
    ) -> None:
        super().__init__(every_n_steps)
        self.n = check_number(n, "callbacks.diffusion_strips.n", int, low=1)
        self.frames = check_number(frames, "callbacks.diffusion_strips.frames", int, low=2)
        self.seed, self.sampler = seed, sampler
        self._real: torch.Tensor | None = None
        self._forward_logged = False

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._real is None and not trainer.sanity_checking:
            self._real = batch[0][: self.n].detach().cpu()

    def real_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
        """The first ``n`` validation images in [−1, 1], read from the datamodule once and kept."""
        if self._real is None and trainer.datamodule is not None:
            self._real = first_images(trainer.datamodule, self.n)
        return None if self._real is None else self._real.to(pl_module.device)

    def log_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if not image_loggers(trainer):
            return
        net, diffusion = pl_module.sampling_net, pl_module.diffusion
        T = diffusion.num_timesteps
        x0 = self.real_images(trainer, pl_module)
        if x0 is not None:
            ts = evenly_spaced(list(range(T)), self.frames)
            noise = randn(x0.shape, torch.Generator().manual_seed(self.seed), x0.device)
            x_ts = [diffusion.q_sample(x0, torch.full((len(x0),), t, device=x0.device), noise) for t in ts]
            if not self._forward_logged:
                log_image(trainer, "diffusion/forward", strip_grid(x_ts), step)
                self._forward_logged = True
            preds, x0_model = [], diffusion.x0_model(net)
            for t, x_t in zip(ts, x_ts):
                tt = torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)
                preds.append(x0_model(x_t, tt).float().clamp(-1, 1))
            log_image(trainer, "diffusion/x0_pred", strip_grid(preds), step)

        sampler = self.sampler or pl_module.sampler
        keep = evenly_spaced(sampler.visited(diffusion), self.frames - 1)
        with stop_sampling_on_sigterm():
            (batch,) = generate_batches(
                net,
                diffusion,
                self.n,
                sampler=sampler,
                seed=self.seed,
                batch_size=self.n,
                device=pl_module.device,
                keep=keep,
                should_stop=sigterm_received(trainer),
            )
        frames = [batch.kept[t] for t in keep] + [batch.images.cpu()]
        log_image(trainer, "diffusion/denoising", strip_grid(frames), step)


def _select(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def main_hparams(config: dict[str, Any], choices: dict[str, str] | None = None) -> dict[str, Any]:
    """What a sweep compares: group choices, scalar leaves of the model/diffusion sections, a few single keys."""
    params: dict[str, Any] = {f"choice/{k}": v for k, v in (choices or {}).items()}
    for section in HPARAM_SECTIONS:
        for key, value in (config.get(section) or {}).items():
            if key.startswith("_") or isinstance(value, dict):
                continue
            params[f"{section}/{key}"] = str(value) if isinstance(value, (list, tuple)) or value is None else value
    for dotted in HPARAM_KEYS:
        value = _select(config, dotted)
        if value is not None:
            params[dotted.replace(".", "/")] = value
    return params


class RunSummary(pl.Callback):
    """Once per run: the schedule figure and the resolved config at the start, the HPARAMS table at the end.

    What it shows comes from the module's stored config (``pl_module.config``): the run's full resolved config
    and group choices under ``run`` when the launcher put them there, else the model sections themselves.

    Figure and text go to the loggers that show them (:mod:`ddpm_lab.training.media`), hyperparameters to all.

    - ``schedule`` (figure): β_t, ᾱ_t, √ᾱ_t and log-SNR against t of the run's diffusion;
    - ``config`` (text): the resolved run config;
    - HPARAMS: :func:`main_hparams` with the final ``val/loss`` (``train/loss`` when there is no validation).
    """

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}
        self._choices: dict[str, str] = {}

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.loggers:
            return
        start = time.perf_counter()
        stored = dict(getattr(pl_module, "config", {}) or {})
        run = stored.get("run") or {}
        self._config = dict(run.get("config") or {k: v for k, v in stored.items() if k != "run"})
        self._choices = dict(run.get("choices") or {})
        if not image_loggers(trainer):  # e.g. CSV alone: the hyperparameters at the end are all it can take
            return
        log_text(trainer, "config", yaml.safe_dump(self._config, sort_keys=False, allow_unicode=True), 0, "yaml")
        name = _select(self._config, "schedule.name") or "schedule"
        fig = schedule_figure({name: pl_module.diffusion.betas}, title=f"{name}, T={pl_module.diffusion.num_timesteps}")
        log_figure(trainer, "schedule", fig, 0)
        log.debug("RunSummary at start took %.3f s", time.perf_counter() - start)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.loggers:
            return
        metrics = {
            k: float(trainer.callback_metrics[k]) for k in ("val/loss", "train/loss") if k in trainer.callback_metrics
        }
        metrics = {"val/loss": metrics["val/loss"]} if "val/loss" in metrics else metrics
        if metrics:
            log_hparams(trainer, main_hparams(self._config, self._choices), metrics, trainer.global_step)
