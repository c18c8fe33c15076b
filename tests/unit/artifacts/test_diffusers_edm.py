"""EDM models and diffusers, offline: an EDM checkpoint exports as a ConsistencyModelPipeline (UNet2DModel + an EDM
scheduler) whose loop draws our sampler's images, imports back to the same model, and what has no counterpart is
refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, EDMDPMSolverMultistepScheduler, EDMEulerScheduler, UNet2DModel

import ddpm_lab
from ddpm_lab.artifacts.diffusers_edm import edm_scheduler_config
from ddpm_lab.artifacts.diffusers_io import read_diffusers, write_diffusers
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.convert import export_diffusers, import_diffusers
from ddpm_lab.diffusion import ImageNoise
from ddpm_lab.errors import ConfigError
from helpers import TINY_TRAIN, ours_checkpoint

EDM = [*TINY_TRAIN, "diffusion=edm", "dataset.root=unused", "model.base_channels=16", "model.groups=8"]


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (our zero-initialised output convs would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + float("norm" in name and name.endswith("weight")))
    return net.eval()


@pytest.fixture(scope="module")
def edm_model(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight EDM model of the tiny run's layout (16 px RGB), as load_model gives it."""
    path = ours_checkpoint(tmp_path_factory.mktemp("edm") / "edm.ckpt", EDM)
    model = load_model(path)
    randomized(model.net)
    return model


@pytest.mark.parametrize(
    "kind,extra,scheduler",
    [("edm_dpm_solver", {}, EDMDPMSolverMultistepScheduler), ("edm_euler", {"eta": 0.0}, EDMEulerScheduler)],
)
def test_the_exported_pipeline_draws_our_samples(tmp_path: Path, edm_model, kind: str, extra: dict, scheduler: type):
    """diffusers' own loop (ConsistencyModelPipeline: x_T·init_noise_sigma, scale_model_input, U-Net at c_noise,
    step) with per-image generators draws what our sampler draws from the same x_T: the preconditioning, the
    Karras levels and the solver are the same (up to float32 σ in diffusers and its √(σ_max² + 1) start)."""
    ours_sampler = ddpm_lab.make_sampler(kind, steps=8, clip_denoised=False, **extra)
    target = f"ddpm_lab.diffusion.{type(ours_sampler).__name__}"
    config = {**edm_model.config, "sampler": {"_target_": target, **ours_sampler.options}}
    write_diffusers(tmp_path / "pipe", config, edm_model.net.state_dict(), global_step=5)
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "ConsistencyModelPipeline" and index["scheduler"][1] == scheduler.__name__
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, num_inference_steps=8, generator=ImageNoise(4, range(3)).generators, output_type="pt")
    # diffusers starts at √(σ_max² + 1)·n where we start at σ_max·n: give ours that x_T
    x_T = torch.cat([ImageNoise(4, [i]).randn((1, 3, 16, 16)) for i in range(3)]) * (80.0**2 + 1) ** 0.5 / 80.0
    ours = edm_model.diffusion.sample(edm_model.net, x_T=x_T, sampler=ours_sampler)
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), theirs.images, rtol=0, atol=2e-3)
    card = (tmp_path / "pipe" / "README.md").read_text()
    assert "EDM" in card and "num_inference_steps" in card


def test_round_trip_keeps_the_model(tmp_path: Path, edm_model):
    """EDM checkpoint -> diffusers -> ddpm_lab: the same weights, σ range, σ_data and outputs."""
    export_diffusers(str(edm_model.path), str(tmp_path / "file"))  # the command's path: from the checkpoint file
    assert (tmp_path / "file" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    write_diffusers(tmp_path / "pipe", edm_model.config, edm_model.net.state_dict(), global_step=5)  # random weights
    unet = UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet", low_cpu_mem_usage=False).eval()
    sections, _ = read_diffusers(tmp_path / "pipe")
    assert sections["diffusion"]["_target_"] == "ddpm_lab.diffusion.EDMDiffusion"
    assert sections["schedule"]["name"] == "karras" and sections["schedule"]["sigma_max"] == 80.0
    import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "back.ckpt"))
    back = load_model(tmp_path / "back.ckpt")
    assert type(back.diffusion) is type(edm_model.diffusion) and back.diffusion.sigma_data == 0.5
    assert type(back.sampler).__name__ == "EDMDPMSolverSampler"  # diffusers has no EDM Heun: DPM-Solver++ instead
    x, c = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([-1.5, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(back.net(x, c), edm_model.net(x, c), rtol=0, atol=0)
        torch.testing.assert_close(unet(x, c).sample, edm_model.net(x, c), rtol=0, atol=1e-5)


def test_what_diffusers_cannot_express_is_one_line(tmp_path: Path, edm_model):
    linear = {**edm_model.config, "schedule": {**edm_model.config["schedule"], "name": "linear"}}
    with pytest.raises(ConfigError, match="diffusers' EDM schedulers put σ on the Karras ramp only"):
        edm_scheduler_config(linear)
    write_diffusers(tmp_path / "pipe", edm_model.config, edm_model.net.state_dict(), global_step=0)
    for name, value in (("prediction_type", "v_prediction"), ("sigma_schedule", "exponential")):
        config = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
        (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, name: value}))
        with pytest.raises(ConfigError, match=f"no counterpart for EDMDPMSolverMultistepScheduler with {name}"):
            read_diffusers(tmp_path / "pipe")
        (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
