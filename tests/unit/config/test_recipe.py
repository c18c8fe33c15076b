"""The DDPM-paper CIFAR-10 recipe: the U-Net's size and the experiment's settings."""

from __future__ import annotations

from pathlib import Path

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


def test_experiment_ddpm_cifar10_is_the_papers_recipe(cfg_train):
    cfg = cfg_train("experiment=ddpm_cifar10")
    assert cfg.dataset._target_.endswith("CIFAR10DataModule")
    assert (cfg.dataset.image_size, cfg.dataset.channels, cfg.dataset.batch_size, cfg.dataset.flip) == (
        32,
        3,
        128,
        True,
    )
    assert cfg.model.base_channels == 128 and list(cfg.model.channel_mults) == [1, 2, 2, 2]
    assert (cfg.model.num_res_blocks, list(cfg.model.attention_resolutions), cfg.model.dropout) == (2, [16], 0.1)
    assert (cfg.schedule.name, cfg.schedule.timesteps, cfg.schedule.beta_start, cfg.schedule.beta_end) == (
        "linear",
        1000,
        1e-4,
        0.02,
    )
    assert cfg.diffusion.prediction == "eps" and cfg.diffusion.loss_weighting == "uniform"
    assert cfg.optimizer.lr == 2e-4 and cfg.optimizer.weight_decay == 0.0 and cfg.warmup_steps == 5000
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_steps == 800_000
    assert cfg.sampler.variance == "fixed_large"


def test_short_chains_of_the_recipe_use_the_posterior_variance(cfg_train):
    """The run samples with fixed_large (1000 steps), but its 100-step grids and FID chains must not."""
    cfg = cfg_train("experiment=ddpm_cifar10", "callbacks=fid", "features@callbacks.fid.features=tiny")
    assert cfg.sampler.variance == "fixed_large"
    for node in (cfg.callbacks.sample_grid.sampler, cfg.callbacks.fid.sampler):
        assert node.steps == 100 and instantiate(node).variance == "fixed_small"


def test_a_short_fixed_large_chain_is_warned_about(caplog):
    from ddpm_lab.config import check_sampler

    with caplog.at_level("WARNING"):
        check_sampler(
            OmegaConf.create({"_target_": "ddpm_lab.diffusion.DDPMSampler", "variance": "fixed_large", "steps": 1000}),
            1000,
        )
    assert "fixed_large" not in caplog.text
    with caplog.at_level("WARNING"):
        check_sampler(
            OmegaConf.create({"_target_": "ddpm_lab.diffusion.DDPMSampler", "variance": "fixed_large", "steps": 100}),
            1000,
            "callbacks.sample_grid.sampler",
        )
    assert "callbacks.sample_grid.sampler.variance=fixed_large with a 100-step chain" in caplog.text
