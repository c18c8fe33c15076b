"""The recipes: the DDPM-paper CIFAR-10 one (U-Net size, settings) and the measured 10-minute MNIST CPU ones."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lab.config import build_components, check_sampler, config_dir
from ddpm_lab.diffusion import DPMSolverSampler, EDMDiffusion, EDMHeunSampler
from ddpm_lab.training.lr_schedules import CosineLR

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


def test_experiment_mnist_cpu_is_the_measured_ten_minute_recipe(cfg_train):
    """The settings docs/benchmarks.md measured ("Quality per hour"): change them only with a new measurement."""

    cfg = cfg_train("experiment=mnist_cpu")
    assert (cfg.model.base_channels, cfg.model.dropout, cfg.dataset.batch_size) == (32, 0.0, 32)
    assert cfg.schedule.name == "cosine" and not cfg.schedule.zero_terminal_snr
    assert (cfg.diffusion.prediction, cfg.diffusion.loss_weighting) == ("v", "min_snr")
    assert (cfg.optimizer.lr, cfg.warmup_steps, cfg.trainer.max_steps) == (2e-3, 100, 2100)
    assert cfg.model.num_res_blocks == 1  # round 2 (issue 27): 1.55x the steps of two blocks in the same time
    assert instantiate(cfg.lr_schedule).func is CosineLR
    net, diffusion, sampler = build_components(cfg)
    assert diffusion.prediction == "v" and not any(m.p for m in net.modules() if isinstance(m, torch.nn.Dropout))
    assert isinstance(sampler, DPMSolverSampler) and (sampler.order, sampler.num_steps) == (2, 25)


def test_experiment_mnist_cpu_cond_is_mnist_cpu_with_class_conditioning(cfg_train):
    """docs/benchmarks.md measured it as `experiment=mnist_cpu conditioning=class`: the two must compose alike."""
    cond = OmegaConf.to_container(cfg_train("experiment=mnist_cpu_cond"), resolve=False)
    typed = OmegaConf.to_container(cfg_train("experiment=mnist_cpu", "conditioning=class"), resolve=False)
    assert cond == typed
    assert cond["conditioning"]["kind"] == "class" and cond["conditioning"]["p_uncond"] == 0.1


def test_experiment_mnist_cpu_edm_changes_only_the_diffusion_of_mnist_cpu(cfg_train):
    """The measured EDM candidate: the first round's mnist_cpu (two residual blocks, 1,350 steps) with EDM and its
    Heun sampler; data, optimizer and schedule of the learning rate as mnist_cpu's."""

    edm, base = cfg_train("experiment=mnist_cpu_edm"), cfg_train("experiment=mnist_cpu")
    for key in ("dataset", "optimizer", "warmup_steps"):
        assert OmegaConf.select(edm, key) == OmegaConf.select(base, key), key
    assert (edm.model.num_res_blocks, edm.trainer.max_steps, edm.trainer.val_check_interval) == (2, 1350, 450)
    assert edm.lr_schedule.total_steps == 1350  # the cosine decays over its own steps
    base.model.num_res_blocks, base.lr_schedule.total_steps = 2, 1350
    assert (edm.model, edm.lr_schedule) == (base.model, base.lr_schedule)
    assert edm.schedule.name == "karras"
    _, diffusion, sampler = build_components(edm)
    assert isinstance(diffusion, EDMDiffusion) and isinstance(sampler, EDMHeunSampler) and sampler.num_steps == 18
