"""callbacks=posthoc_ema (training/posthoc_ema.py): power-function EMAs tracked during training, snapshots written
every N steps, their state in every checkpoint, continued exactly (the earlier snapshots kept) from a checkpoint, and
refused where a continued run would not be one power-function EMA."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from ddpm_lab.artifacts.posthoc_ema import STATE_KEY, read_snapshot, snapshot_path
from ddpm_lab.config.checks import check_posthoc_continues
from ddpm_lab.diffusion import DDPMSampler, GaussianDiffusion, make_betas
from ddpm_lab.errors import ConfigError
from ddpm_lab.models import UNet
from ddpm_lab.models.power_ema import PowerEMA
from ddpm_lab.training import DiffusionModule, PosthocEMA
from ddpm_lab.training.summary import human_bytes, snapshot_plan
from helpers import POSTHOC_TRAIN, TINY_TRAIN, compose_config, ours_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def state(path: Path) -> dict:
    return read_checkpoint(path)["callbacks"][STATE_KEY]


def test_snapshots_every_n_steps_and_the_state_in_each_checkpoint(posthoc_run: Path):
    folder = posthoc_run / "posthoc_ema"
    assert sorted(p.name for p in folder.iterdir()) == ["snapshot_0000002.pt", "snapshot_0000004.pt"]
    last, early = (
        state(posthoc_run / "checkpoints" / "last.ckpt"),
        state(posthoc_run / "checkpoints" / "step_0000002.ckpt"),
    )
    assert last["step"] == 4 and last["snapshots"] == [2, 4] and early["snapshots"] == [2]
    assert last["run_id"] == early["run_id"] and last["sigma_rels"] == [0.05, 0.10]
    for step, ckpt_state in ((2, early), (4, last)):  # a snapshot holds the same averages as the checkpoint of its step
        snap = read_snapshot(snapshot_path(folder, step), last["run_id"])
        assert snap.step == step and snap.sigma_rels == (0.05, 0.10)
        for a, b in zip(snap.profiles, ckpt_state["profiles"]):
            assert set(a) == set(read_checkpoint(posthoc_run / "checkpoints" / "last.ckpt")["state_dict"])
            assert all(torch.equal(a[k], b[k]) for k in a)
    # the averages move with training, and the shorter one (0.05) is nearer the raw weights than the longer one
    raw = read_checkpoint(posthoc_run / "checkpoints" / "last.ckpt")["current_model_state"]
    short, long = last["profiles"]
    assert any(not torch.equal(short[k], early["profiles"][0][k]) for k in short)
    gap = lambda avg: sum(float((avg[k] - raw[k]).abs().sum()) for k in avg)
    assert gap(short) < gap(long)


def tiny_module() -> DiffusionModule:
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), groups=4)
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=50, warn=False))
    return DiffusionModule(net, diffusion, DDPMSampler(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))


def fit(callbacks: list[pl.Callback], max_steps: int, ckpt_path: Path | None = None) -> pl.Trainer:
    """Tiny training on fixed images, two batches an epoch."""
    pl.seed_everything(0)
    images = torch.linspace(-1, 1, 16 * 64).reshape(16, 1, 8, 8)
    data = DataLoader(TensorDataset(images, torch.zeros(16, dtype=torch.long)), batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(tiny_module(), data, ckpt_path=ckpt_path)
    return trainer


class WeightsRecorder(pl.Callback):
    """The weights after every optimizer step (what the post-hoc EMA folds in)."""

    def __init__(self) -> None:
        self.steps: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]


def test_the_averages_continue_bit_for_bit_from_a_checkpoint(tmp_path):
    """Whatever the resumed training does (its own exactness is issue 23's), the averages pick up exactly where the
    checkpoint left them: resumed = the checkpoint's state updated with the resumed run's own weights."""
    first = PosthocEMA(every_n_steps=2, folder=str(tmp_path / "snapshots"))
    fit([first], max_steps=2).save_checkpoint(tmp_path / "step2.ckpt")
    written = snapshot_path(tmp_path / "snapshots", 2).read_bytes()
    resumed, weights = PosthocEMA(every_n_steps=2, folder=str(tmp_path / "snapshots")), WeightsRecorder()
    fit([resumed, weights], max_steps=4, ckpt_path=tmp_path / "step2.ckpt")
    saved = state(tmp_path / "step2.ckpt")
    expected = PowerEMA(saved["sigma_rels"], saved["profiles"][0], step=2)
    expected.load(saved["profiles"], step=2)
    for step in (3, 4):
        expected.update(weights.steps[step], step)
    for a, b in zip(expected.averages, resumed.ema.averages):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert resumed.run_id == first.run_id and resumed.snapshots == [2, 4] and resumed.ema.step == 4
    # the earlier snapshot survives the resume as it was; the new one belongs to the same run
    assert snapshot_path(tmp_path / "snapshots", 2).read_bytes() == written
    assert read_snapshot(snapshot_path(tmp_path / "snapshots", 4), first.run_id).step == 4


def test_continuing_without_the_same_tracking_is_refused_before_any_work(posthoc_run, tmp_path, image_folder):
    plain = ours_checkpoint(tmp_path / "plain.ckpt", [*TINY_TRAIN, f"dataset.root={image_folder}"])
    cfg = compose_config("train", [*POSTHOC_TRAIN, f"dataset.root={image_folder}"])
    check_posthoc_continues(cfg, plain)  # step 0 (imported weights): post-hoc EMA starts there
    ckpt = torch.load(plain, weights_only=True)
    ckpt["global_step"] = 3
    torch.save(ckpt, tmp_path / "midway.ckpt")
    with pytest.raises(
        ConfigError, match=r"\(step 3\) was trained without it: post-hoc EMA must follow a run from step 0"
    ):
        check_posthoc_continues(cfg, tmp_path / "midway.ckpt")
    other = compose_config(
        "train", [*POSTHOC_TRAIN, f"dataset.root={image_folder}", "callbacks.posthoc_ema.sigma_rels=[0.1]"]
    )
    with pytest.raises(ConfigError, match=r"sigma_rels=\[0.1\] but .* tracked \[0.05, 0.1\]"):
        check_posthoc_continues(other, posthoc_run / "checkpoints" / "last.ckpt")
    check_posthoc_continues(cfg, posthoc_run / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma_rels": [0.4]}, "callbacks.posthoc_ema.sigma_rels=0.4 is out of range"),
        ({"every_n_steps": 0}, "callbacks.posthoc_ema.every_n_steps must be >= 1"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PosthocEMA(**kwargs)


def test_the_startup_summary_counts_the_snapshots_and_their_disk():
    module = tiny_module()
    size = 2 * 4 * sum(p.numel() for p in module.parameters())  # two float32 averages
    callback = PosthocEMA(every_n_steps=250, folder="run/posthoc_ema")
    trainer = SimpleNamespace(callbacks=[callback], max_steps=1000, global_step=250)
    line = snapshot_plan(trainer, module)
    assert line == (
        f"sigma_rel 0.05, 0.1, a snapshot every 250 steps into run/posthoc_ema: 3 x {human_bytes(size)} = "
        f"{human_bytes(3 * size)} more, all kept (each one is needed)"
    )
    assert snapshot_plan(SimpleNamespace(callbacks=[]), module) is None
