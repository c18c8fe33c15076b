"""``python -m ddpm_lab.convert`` on the command line: diffusers folder -> checkpoint -> diffusers folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from huggingface_hub import constants

import ddpm_lab
from ddpm_lab.artifacts.checkpoint import checkpoint_config, read_checkpoint
from ddpm_lab.convert import main
from helpers import run_cli, write_hub_cache
from mistakes import run_in_process


@pytest.mark.slow
def test_convert_cli_both_ways(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(tmp_path / "pipe")
    proc = run_cli("ddpm_lab.convert", "from_diffusers=pipe", "out=model.ckpt", cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "model.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "pipe"]  # no run folder, no log file
    net, diffusion, sampler = ddpm_lab.load_model(tmp_path / "model.ckpt")
    assert diffusion.num_timesteps == 20 and type(sampler).__name__ == "DDPMSampler"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 19])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), unet(x, t).sample, rtol=0, atol=1e-5)

    outcome = run_in_process(main, ["ckpt=model.ckpt", "to_diffusers=back", "fid=12.5"], tmp_path)
    assert outcome.status == 0, outcome.stderr[-3000:]
    back = DDPMPipeline.from_pretrained(tmp_path / "back")
    assert (
        back.scheduler.config.num_train_timesteps == 20 and "FID: 12.5" in (tmp_path / "back" / "README.md").read_text()
    )
    with torch.no_grad():
        torch.testing.assert_close(back.unet(x, t).sample, unet(x, t).sample, rtol=0, atol=1e-5)


def test_convert_takes_a_hub_id_from_the_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user without network types (HF_HUB_OFFLINE=1, the model in the Hub's cache), in this process."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(tmp_path / "pipe")
    snapshot = write_hub_cache(tmp_path / "hub", "someone/tiny-ddpm", tmp_path / "pipe")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # what HF_HUB_CACHE=... sets
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "work").mkdir()
    outcome = run_in_process(main, ["from_diffusers=someone/tiny-ddpm", "out=model.ckpt"], tmp_path / "work")
    assert outcome.status == 0, outcome.stderr[-3000:]
    ckpt = tmp_path / "work" / "model.ckpt"
    stored = checkpoint_config(read_checkpoint(ckpt), ckpt)
    assert stored["run"]["config"]["converted_from"] == f"someone/tiny-ddpm@{snapshot.name}"
    net, _, _ = ddpm_lab.load_model(ckpt)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0, 19])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), unet(x, t).sample, rtol=0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["model.ckpt"]
