"""Each command's ``<command>_settings(cfg)``: one frozen settings object with every setting parsed once
(integral floats as integers, the device, guidance as numbers, the sampler config or None) that the rest of the
command reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from ddpm_lab.config.settings import convert_settings, evaluate_settings, sample_settings, visualize_settings
from ddpm_lab.data import DigitsDataModule
from ddpm_lab.metrics import NLLSettings
from helpers import compose_config


def test_evaluate_settings(cfg_eval):
    cfg = cfg_eval("ckpt=run/last.ckpt", "n=8.0", "guidance=[0,2]", "device=cpu", "paths.cache_dir=/c", "seed=3.0")
    s = evaluate_settings(cfg)
    assert s.ckpt == "run/last.ckpt" and s.weights == "auto" and s.guidance == (0.0, 2.0) and s.nll is None
    assert s.scoring.n == 8 and type(s.scoring.n) is int and s.scoring.seed == 3 and type(s.scoring.seed) is int
    assert s.scoring.device == torch.device("cpu") and s.scoring.guidance_rescale == 0.0
    assert s.stats_dir == Path("/c/fid_stats") and s.cache_dir == "/c" and s.sampler is None and s.dataset is None
    assert isinstance(s.features, DictConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ckpt = "other.ckpt"
    nll = evaluate_settings(cfg_eval("ckpt=a.ckpt", "metrics=nll", "nll.n=null", "nll.stride=4.0", "cache_dir=/s"))
    assert nll.nll == NLLSettings(n=None, stride=4, clip_denoised=True, variance=None) and nll.stats_dir == Path("/s")


def test_sample_settings(cfg_sample):
    cfg = cfg_sample("ckpt=a.ckpt", "class=[cat,7]", "guidance=3", "device=cpu", "per_class=2.0", "sampler=ddim")
    s = sample_settings(cfg)
    assert s.classes == ("cat", 7) and s.guidance == 3 and s.per_class == 2 and type(s.per_class) is int
    assert s.timesteps == (999, 800, 600, 400, 200, 100, 50, 0) and s.device == torch.device("cpu")
    assert isinstance(s.sampler, DictConfig) and s.sampler.steps == 50
    one = sample_settings(cfg_sample("ckpt=a.ckpt", "class=dog", "device=cpu"))
    assert one.classes == "dog" and one.guidance is None and one.sampler is None and one.per_class is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 3


def test_visualize_settings():
    s = visualize_settings(compose_config("visualize", ["dataset=digits", "n_images=2.0", "timesteps=[0,10]"]))
    assert s.n_images == 2 and s.timesteps == (0, 10) and s.html is False and s.ckpt is None
    assert isinstance(s.data, DigitsDataModule) and s.dataset.endswith("DigitsDataModule")
    assert s.schedule.name == "linear"


def test_convert_settings():
    pytest.importorskip("diffusers")
    s = convert_settings(compose_config("convert", ["ckpt=a.ckpt", "to_diffusers=out", "fid=3", "weights=raw"]))
    assert (s.direction, s.source, s.target, s.weights, s.fid) == ("export", "a.ckpt", "out", "raw", 3.0)
    s = convert_settings(compose_config("convert", ["from_diffusers=pipe", "out=m.ckpt"]))
    assert (s.direction, s.source, s.target, s.fid) == ("import", "pipe", "m.ckpt", None)
