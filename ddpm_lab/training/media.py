"""Images, figures and text to every logger of a trainer that can show them (TensorBoard, W&B, MLflow).

Scalars need nothing of this: ``LightningModule.log`` reaches every logger. Loggers that show no pictures
(``CSVLogger``) are skipped here. Lightning's W&B and MLflow logger classes import their packages only when
built, so the ``isinstance`` checks below cost nothing when those optional extras are missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger


def image_loggers(trainer: pl.Trainer) -> list[Logger]:
    """The trainer's loggers that can show images."""
    return [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger, MLFlowLogger))]


def _hwc(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) uint8 tensor as an (H, W) or (H, W, 3) uint8 array."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _artifact(tag: str, step: int, suffix: str) -> str:
    """MLflow artifact path of a tag at a step: one folder per tag, one file per step."""
    return f"{tag}/step_{step:07d}.{suffix}"


def log_image(trainer: pl.Trainer, tag: str, image: torch.Tensor, step: int) -> None:
    """A (C, H, W) uint8 image (C = 1 or 3) under ``tag`` at ``step`` in every image-capable logger."""
    for logger in image_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[_hwc(image)], step=step)
        else:
            logger.experiment.log_image(logger.run_id, _hwc(image), artifact_file=_artifact(tag, step, "png"))


def figure_image(fig: Figure) -> torch.Tensor:
    """A matplotlib figure drawn by its Agg canvas, as a (3, H, W) uint8 tensor."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def log_figure(trainer: pl.Trainer, tag: str, fig: Figure, step: int) -> None:
    """A figure as an image (see :func:`log_image`); drawn only when some logger can show it."""
    if image_loggers(trainer):
        log_image(trainer, tag, figure_image(fig), step)


def log_text(trainer: pl.Trainer, tag: str, text: str, step: int, suffix: str = "txt") -> None:
    """Preformatted text (e.g. a YAML config): TensorBoard's text tab, a one-cell W&B table, an MLflow artifact."""
    for logger in image_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            # Markdown: four spaces of indent make TensorBoard show the text as a code block.
            logger.experiment.add_text(tag, "\n".join("    " + line for line in text.splitlines()), global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=tag, columns=[tag], data=[[text]], step=step)
        else:
            logger.experiment.log_text(logger.run_id, text, artifact_file=f"{tag}.{suffix}")


def log_hparams(trainer: pl.Trainer, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """The run's hyperparameters to every logger; TensorBoard's HPARAMS table also gets the final ``metrics``
    (the others have them already as scalars). A resumed MLflow run keeps the values it has (MLflow refuses to
    change a parameter, e.g. a raised ``trainer/max_steps``)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=metrics, step=step)
        elif isinstance(logger, MLFlowLogger):
            known = logger.experiment.get_run(logger.run_id).data.params
            logger.log_hyperparams({k: v for k, v in params.items() if k not in known})
        else:
            logger.log_hyperparams(params)
