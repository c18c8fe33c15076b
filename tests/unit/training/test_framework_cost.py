"""Framework cost per step (issue 26): ``train/loss`` goes through ``self.log`` only on the steps someone reads it
(loggers, progress-bar refreshes, the last step), and what the user sees stays what it was."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.diffusion import DDPMSampler, GaussianDiffusion, make_betas
from ddpm_lab.models import UNet
from ddpm_lab.training import DiffusionModule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


class Recorder(Logger, pl.Callback):
    """A logger keeping every logged metric; a callback keeping each step's loss and progress-bar values."""

    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.losses: list[float] = []
        self.bar: list[float | None] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        value = trainer.progress_bar_metrics.get("train/loss")
        self.bar.append(None if value is None else float(value))


@pytest.fixture(scope="module")
def run() -> tuple[pl.Trainer, Recorder, list[int]]:
    """10 steps of 12 batches an epoch, logging every 3rd step, a progress bar refreshing every 4th batch."""
    pl.seed_everything(0)
    net = UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=(1,),
        num_res_blocks=1,
        attention_resolutions=(),
        groups=4,
    )
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=50, warn=False))
    module = DiffusionModule(net, diffusion, DDPMSampler(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    logged_at: list[int] = []
    log = module.log

    def counting_log(name, value, *args, **kwargs):
        if name == "train/loss":
            logged_at.append(module.global_step + 1)
        return log(name, value, *args, **kwargs)

    module.log = counting_log
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=10,
        log_every_n_steps=3,
        logger=recorder,
        callbacks=[TQDMProgressBar(refresh_rate=4), recorder],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    data = TensorDataset(torch.rand(96, 1, 8, 8) * 2 - 1, torch.zeros(96, dtype=torch.long))
    trainer.fit(module, DataLoader(data, batch_size=8))
    return trainer, recorder, logged_at


def test_train_loss_is_logged_only_where_it_is_read(run) -> None:
    _, _, logged_at = run
    # Logging steps 3, 6, 9; progress-bar refreshes at batches 4, 8; the last step, 10.
    assert logged_at == [3, 4, 6, 8, 9, 10]


def test_loggers_progress_bar_and_final_metrics_see_what_they_saw(run) -> None:
    trainer, recorder, _ = run
    written = {step: m["train/loss"] for step, m in recorder.metrics if "train/loss" in m}
    assert sorted(written) == [2, 5, 8]  # Lightning's logging steps (0-based), each with that step's loss
    for step, value in written.items():
        assert value == pytest.approx(recorder.losses[step], rel=1e-6)
    for n in (4, 8):  # what the bar shows when it refreshes: that batch's loss
        assert recorder.bar[n - 1] == pytest.approx(recorder.losses[n - 1], rel=1e-6)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(recorder.losses[-1], rel=1e-6)
