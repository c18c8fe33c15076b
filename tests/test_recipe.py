"""The DDPM-paper CIFAR-10 recipe: the U-Net's size and the experiment's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lab.config import config_dir

PAPER_PARAMS = 35.7e6  # Ho et al. (2020), CIFAR-10 model


def test_unet_ddpm_cifar10_has_the_papers_35_7M_parameters():
    cfg = OmegaConf.load(Path(config_dir()) / "model" / "unet_ddpm_cifar10.yaml")
    cfg.in_channels, cfg.image_size = 3, 32  # instead of ${dataset.*}: independent of any dataset option
    net = instantiate(cfg)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.01, f"{n / 1e6:.2f}M parameters"


def test_experiment_ddpm_cifar10_is_the_papers_recipe():
    if not (Path(config_dir()) / "dataset" / "cifar10.yaml").is_file():
        pytest.skip("configs/dataset/cifar10.yaml is not in this checkout yet (added by the CIFAR-10 data issue)")
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ddpm_cifar10"])
    assert cfg.dataset._target_.endswith("CIFAR10DataModule")
    assert (cfg.dataset.image_size, cfg.dataset.channels, cfg.dataset.batch_size, cfg.dataset.flip) == (32, 3, 128, True)
    assert cfg.model.base_channels == 128 and list(cfg.model.channel_mults) == [1, 2, 2, 2]
    assert (cfg.model.num_res_blocks, list(cfg.model.attention_resolutions), cfg.model.dropout) == (2, [16], 0.1)
    assert (cfg.schedule.name, cfg.schedule.timesteps, cfg.schedule.beta_start, cfg.schedule.beta_end) == ("linear", 1000, 1e-4, 0.02)
    assert cfg.diffusion.prediction == "eps" and cfg.diffusion.loss_weighting == "uniform"
    assert cfg.optimizer.lr == 2e-4 and cfg.optimizer.weight_decay == 0.0 and cfg.warmup_steps == 5000
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_steps == 800_000
    assert cfg.sampler.variance == "fixed_large"
