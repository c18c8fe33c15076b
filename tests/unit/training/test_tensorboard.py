"""TensorBoard during training: every promised scalar, image, figure, text and HPARAMS entry is in the event file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ddpm_lab.training.callbacks import main_hparams

pytestmark = pytest.mark.filterwarnings("ignore:.*val_dataloader.*")


@pytest.fixture(scope="module")
def events(tiny_run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_scalars(events: EventAccumulator) -> None:
    tags = set(events.Tags()["scalars"])
    wanted = {"train/loss", "val/loss", "lr", "train/grad_norm"} | {f"train/loss_q{q}" for q in range(4)}
    assert wanted <= tags, wanted - tags
    for tag in wanted:
        values = [e.value for e in events.Scalars(tag)]
        assert values and all(math.isfinite(v) and v >= 0 for v in values), (tag, values)
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    assert len(events.Scalars("train/loss")) == 6  # log_every_n_steps=1 in debug=default
    speed = {"speed/images_per_s", "speed/step_time_s", "speed/data_wait_share"}  # Throughput (issue 16)
    assert speed <= tags and all(e.value > 0 for e in events.Scalars("speed/images_per_s"))
    assert {e.step for e in events.Scalars("val/loss")} >= {2, 5}  # validation at steps 3 and 6


def test_images_over_steps(events: EventAccumulator) -> None:
    # 16 px images, 2 px padding: a column or row takes 18 px, plus 2 px of border.
    side = lambda k: 18 * k + 2
    expected = {
        "samples/grid": ([3, 6], (side(2), side(2))),  # n=4 samples, 2 x 2
        "diffusion/x0_pred": ([3, 6], (side(8), side(4))),  # 4 images x 8 timesteps
        "diffusion/denoising": ([3, 6], (side(6), side(4))),  # 5 respaced steps + the output
        "diffusion/forward": ([3], (side(8), side(4))),  # once: it does not depend on the weights
    }
    for tag, (steps, (width, height)) in expected.items():
        images = events.Images(tag)
        assert [e.step for e in images] == steps, tag
        assert all((e.width, e.height) == (width, height) for e in images), (tag, [(e.width, e.height) for e in images])
    schedule = events.Images("schedule")
    assert [e.step for e in schedule] == [0] and schedule[0].width > 400 and schedule[0].height > 100


def test_config_text(events: EventAccumulator) -> None:
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "timesteps: 50" in text and "image_size: 16" in text  # resolved values, not ${...}
    assert "${" not in text


def test_hparams(events: EventAccumulator) -> None:
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/loss"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["schedule/timesteps"].number_value == 50
    assert start.hparams["choice/model"].string_value == "unet_tiny"
    assert start.hparams["optimizer/lr"].number_value > 0


def test_main_hparams_flattens_scalars_only() -> None:
    config = {
        "schedule": {"_target_": "x", "name": "cosine", "timesteps": 10},
        "model": {"channel_mults": [1, 2], "sub": {"a": 1}},
        "dataset": {"batch_size": 8},
        "seed": None,
    }
    params = main_hparams(config, {"dataset": "mnist"})
    assert params == {
        "choice/dataset": "mnist",
        "schedule/name": "cosine",
        "schedule/timesteps": 10,
        "model/channel_mults": "[1, 2]",
        "dataset/batch_size": 8,
    }


def test_silent_under_fast_dev_run(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from ddpm_lab.diffusion import GaussianDiffusion
    from ddpm_lab.diffusion.samplers import DDPMSampler
    from ddpm_lab.diffusion.schedules import make_betas
    from ddpm_lab.models.unet import UNet
    from ddpm_lab.training.callbacks import DiffusionStrips, RunSummary, SampleGrid
    from ddpm_lab.training.module import DiffusionModule

    net = UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=[1],
        num_res_blocks=1,
        attention_resolutions=[],
        groups=4,
    )
    module = DiffusionModule(
        net,
        GaussianDiffusion(make_betas("cosine", 20)),
        DDPMSampler(steps=2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 1, 8, 8) * 2 - 1), batch_size=2)
    callbacks = [SampleGrid(every_n_steps=1, n=2), DiffusionStrips(every_n_steps=1, n=1), RunSummary()]
    trainer = pl.Trainer(
        fast_dev_run=2,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=pl.loggers.TensorBoardLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    assert trainer.global_step == 2
    assert not any(tmp_path.rglob("*.png")) and not any(tmp_path.rglob("events.out.tfevents*"))
