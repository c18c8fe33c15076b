"""The start-up summary's pieces: files a checkpoint policy keeps, sizes, the steps line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from ddpm_lab.models import UNet
from ddpm_lab.models.flops import forward_flops_per_image
from ddpm_lab.training import ConstantLR, StartupSummary
from ddpm_lab.training.summary import files_kept, human_bytes, human_time, optimizer_slots


def periodic(every: int, keep: int, last: bool = True, monitor: str | None = "step") -> ModelCheckpoint:
    mode = "max" if monitor == "step" else "min"
    return ModelCheckpoint(every_n_train_steps=every, save_top_k=keep, save_last=last, monitor=monitor, mode=mode)


@pytest.mark.parametrize(
    ("callback", "steps", "files"),
    [
        (periodic(10_000, 5), 800_000, 6),  # the CIFAR recipe: 5 periodic + last.ckpt (was 80 + 1)
        (periodic(10_000, -1), 800_000, 81),  # keep all
        (periodic(1000, 5), 2500, 3),  # a short run saves only 2 periodic ones
        (periodic(1000, -1), None, None),  # keep all, no step limit: no bound
        (periodic(1000, 5), None, 6),
        (periodic(5000, 1, last=False, monitor="fid/fid"), 800_000, 1),  # the best by FID
    ],
)
def test_files_kept(callback: ModelCheckpoint, steps: int | None, files: int | None) -> None:
    assert files_kept(callback, steps) == files


def test_human_units_and_optimizer_state() -> None:
    assert [human_bytes(n) for n in (512, 26_000_000, 3.42e9)] == ["512 B", "26 MB", "3.42 GB"]
    assert [human_time(s) for s in (42, 600, 36_000)] == ["42 s", "10.0 min", "10.0 h"]
    adam = SimpleNamespace(defaults={"betas": (0.9, 0.999), "amsgrad": False})
    sgd = SimpleNamespace(defaults={"momentum": 0.9})
    assert [optimizer_slots(o) for o in (adam, sgd, None)] == [2, 1, 0]


def test_the_flop_count_before_step_one_leaves_training_bit_for_bit() -> None:
    """The summary runs a forward pass before the first step: no random numbers drawn, dropout back on."""
    net = UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=[1],
        num_res_blocks=1,
        groups=4,
        dropout=0.5,
        attention_resolutions=[],
    )
    state = torch.get_rng_state()
    assert forward_flops_per_image(net, (1, 8, 8)) > 0
    assert torch.equal(torch.get_rng_state(), state) and net.training


def test_steps_line_flags_a_warmup_longer_than_the_run() -> None:
    summary = StartupSummary()
    trainer = SimpleNamespace(max_steps=500)
    images = torch.zeros(1000, 1, 2, 2)
    too_long = summary._steps_line(trainer, SimpleNamespace(lr_factor=ConstantLR(1000)), 64, images)
    assert too_long.startswith("0 -> 500 (32 epochs), lr warm-up 1,000 steps then ConstantLR (the warm-up outlasts")
    assert "outlasts" not in summary._steps_line(trainer, SimpleNamespace(lr_factor=ConstantLR(25)), 64, images)
