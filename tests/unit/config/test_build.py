"""Building from configs keeps the real reason of a failure, names the config key, and keeps our error classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ddpm_lab.config import build, config_dir
from ddpm_lab.config.build import schedule_options
from ddpm_lab.errors import ConfigError, WeightsMissingError


def test_a_constructor_refusal_names_the_key_where_the_node_sits():
    node = OmegaConf.create({"_target_": "ddpm_lab.diffusion.DDIMSampler", "eta": 1.5})
    with pytest.raises(ConfigError, match=r"^sampler.eta must be in \[0, 1\], got 1.5$"):
        build("sampler", node)
    with pytest.raises(ConfigError, match=r"^callbacks.sample_grid.sampler.eta must be in \[0, 1\]"):
        build("callbacks.sample_grid.sampler", node)


def test_an_unknown_option_keeps_the_real_reason():
    node = OmegaConf.create({"_target_": "ddpm_lab.models.UNet", "widht": 3})
    with pytest.raises(ConfigError, match="model: .*unexpected keyword argument 'widht'"):
        build("model", node)


def test_a_target_that_does_not_exist_is_a_config_error():
    with pytest.raises(ConfigError, match="model: .*ddpm_lab.models.NoSuchNet"):
        build("model", OmegaConf.create({"_target_": "ddpm_lab.models.NoSuchNet"}))


def test_our_own_error_classes_survive(tmp_path):
    node = OmegaConf.create({"_target_": "ddpm_lab.metrics.InceptionFeatures", "weights_path": str(tmp_path / "w.pth")})
    with pytest.raises(WeightsMissingError, match="Inception weights not found"):
        build("features", node)


def test_a_bug_is_not_dressed_up_as_a_config_error():
    with pytest.raises(ZeroDivisionError):
        build("x", OmegaConf.create({"_target_": "operator.truediv", "_args_": [1, 0]}))


def test_every_schedule_option_is_compared() -> None:
    names = {p.stem for p in Path(config_dir(), "schedule").glob("*.yaml")}
    schedules = schedule_options(30)
    assert set(schedules) == names >= {"linear", "cosine", "quadratic"}
    assert all(b.shape == (30,) for b in schedules.values())
    cosine = OmegaConf.create(
        {"_target_": "ddpm_lab.diffusion.make_betas", "name": "cosine", "timesteps": 30, "s": 0.1}
    )
    assert not torch.equal(schedule_options(30, cosine)["cosine"], schedules["cosine"])  # the run's own overrides
