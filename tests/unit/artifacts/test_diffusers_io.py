"""Interop with diffusers, proven offline: the diffusers side is built here with random weights (the published
configurations, or small ones with the same layout), saved with save_pretrained, converted, and compared."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf

import ddpm_lab
from ddpm_lab import convert
from ddpm_lab.artifacts import diffusers_io
from ddpm_lab.artifacts.allow_list import build_stored
from ddpm_lab.artifacts.checkpoint import CHECKPOINT_FORMAT, is_training_checkpoint, read_checkpoint
from ddpm_lab.artifacts.diffusers_io import NULL_CLASS_KEY, diffusers_unet_config, read_diffusers, write_diffusers
from ddpm_lab.artifacts.trained_model import load_model, net_weights
from ddpm_lab.config.checks import check_train_config
from ddpm_lab.convert import export_diffusers, import_diffusers
from ddpm_lab.diffusion import ImageNoise
from ddpm_lab.errors import CheckpointError, ConfigError, OutputExistsError
from ddpm_lab.models import UNet
from ddpm_lab.train import train
from helpers import FIXTURES, TINY_TRAIN

LEGACY = FIXTURES / "legacy_run" / "checkpoints" / "last.ckpt"
# Ho et al.'s architectures as google/ddpm-cifar10-32 and google/ddpm-{celebahq,church,bedroom}-256 configure them.
ORIGINAL = {
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
    "attention_head_dim": None,
    "layers_per_block": 2,
}
CIFAR10 = {
    **ORIGINAL,
    "sample_size": 32,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}
LAYOUT_256 = {  # the 256 px layout (six levels, attention on the fifth), small widths and a 64 px input
    **ORIGINAL,
    "sample_size": 64,
    "block_out_channels": (16, 16, 32, 32, 64, 64),
    "norm_num_groups": 8,
    "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
}
LAYOUT_256_PUBLISHED = {"sample_size": 256, "block_out_channels": (128, 128, 256, 256, 512, 512), "norm_num_groups": 32}


def save_pipeline(folder: Path, unet_config: dict, seed: int = 0, **scheduler: object) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(**unet_config).eval()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler)).save_pretrained(folder)
    return unet


def outputs(a, b, x: torch.Tensor, t: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x, t).sample - b(x, t)).abs().max())


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (our zero-initialised output convs would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + float("norm" in name and name.endswith("weight")))
    return net.eval()


def test_published_cifar10_architecture_converts_exactly(tmp_path):
    unet = save_pipeline(tmp_path / "pipe", CIFAR10, variance_type="fixed_large")
    sections, state = read_diffusers(tmp_path / "pipe")
    assert sections["model"]["norm_eps"] == 1e-6 and sections["model"]["time_freq_shift"] == 1
    assert sections["sampler"]["variance"] == "fixed_large" and sections["diffusion"]["prediction"] == "eps"
    net, _, _ = build_stored(sections)
    net.load_state_dict(state)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in unet.parameters())
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 999])
    assert outputs(unet, net.eval(), x, t) <= 1e-5


def test_256_layout_converts_exactly_both_ways(tmp_path):
    unet = save_pipeline(tmp_path / "pipe", LAYOUT_256, prediction_type="v_prediction")
    import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "a.ckpt"))
    model = load_model(tmp_path / "a.ckpt")
    assert model.diffusion.prediction == "v" and len(model.net.down) == 6 * 3 - 1  # six levels, five downsamples
    x, t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([500])
    assert outputs(unet, model.net, x, t) <= 1e-5
    # the reverse direction, from our own randomly initialised network
    randomized(model.net, seed=2)
    config = {**model.config, "dataset": {"name": "LSUNChurch", "image_size": 64, "channels": 3}}
    write_diffusers(tmp_path / "out", config, model.net.state_dict(), global_step=123, fid=7.5)
    theirs = UNet2DModel.from_pretrained(tmp_path / "out" / "unet", low_cpu_mem_usage=False).eval()
    assert outputs(theirs, model.net, x, t) <= 1e-5
    card = (tmp_path / "out" / "README.md").read_text()
    assert "LSUNChurch" in card and "123" in card and "7.5" in card and "v_prediction" in card


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_pipeline_and_our_sampler_draw_the_same_images(tmp_path, variance):
    """One whole DDPM chain: DDPMPipeline's scheduler loop and ddpm_lab's sampler, same x_T and per-step noise
    (diffusers draws image k's noise from generator[k] when given a list: our per-image streams, seeded alike)."""
    small = {**ORIGINAL, "sample_size": 8, "block_out_channels": (16, 32), "norm_num_groups": 8}
    small.update(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    save_pipeline(tmp_path / "pipe", small, num_train_timesteps=20, beta_end=0.3, variance_type=variance)
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=3, generator=ImageNoise(5, range(3)).generators, num_inference_steps=20, output_type="pt"
    )
    import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "a.ckpt"))
    net, diffusion, sampler = ddpm_lab.load_model(tmp_path / "a.ckpt")
    assert sampler.variance == variance
    ours = ddpm_lab.generate(net, diffusion, 3, sampler=sampler, seed=5)
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), theirs.images, rtol=0, atol=1e-5)


def test_round_trip_gives_identical_weights_and_samples(tmp_path):
    """A real training checkpoint (EMA on) -> diffusers -> ddpm_lab: the same weights, config and samples."""
    export_diffusers(str(LEGACY), str(tmp_path / "pipe"))
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "back.ckpt"))
    before, after = read_checkpoint(LEGACY), read_checkpoint(tmp_path / "back.ckpt")
    ema, back = net_weights(before, "ema"), net_weights(after)
    assert ema.keys() == back.keys() and all(torch.equal(ema[k], back[k]) for k in ema)
    assert after["ddpm_lab"]["config"]["schedule"] == before["ddpm_lab"]["config"]["schedule"]  # names migrated
    old, new = load_model(LEGACY), load_model(tmp_path / "back.ckpt")
    ddpm = ddpm_lab.make_sampler("ddpm")
    torch.testing.assert_close(
        ddpm_lab.generate(old.net, old.diffusion, 2, sampler=ddpm, seed=3),
        ddpm_lab.generate(new.net, new.diffusion, 2, sampler=ddpm, seed=3),
        rtol=0,
        atol=0,
    )


def test_unsupported_blocks_and_configs_are_one_clear_message(tmp_path):
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (tmp_path / "cond" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    with pytest.raises(ConfigError, match="holds a UNet2DConditionModel: only diffusers' UNet2DModel"):
        read_diffusers(tmp_path / "cond")
    (tmp_path / "cross").mkdir()
    (tmp_path / "cross" / "config.json").write_text(
        json.dumps({"_class_name": "UNet2DModel", "down_block_types": ["SkipDownBlock2D"] * 4, "act_fn": "gelu"})
    )
    (tmp_path / "cross" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    with pytest.raises(ConfigError, match="no counterpart for act_fn='gelu', block SkipDownBlock2D"):
        read_diffusers(tmp_path / "cross")
    with pytest.raises(ConfigError, match="neither model_index.json nor config.json"):
        read_diffusers(tmp_path)
    # a U-Net whose GroupNorm groups do not divide a width: ours uses gcd, diffusers cannot
    model = read_checkpoint(LEGACY)["ddpm_lab"]["config"]
    odd = {**model, "model": {**model["model"], "base_channels": 6}}
    with pytest.raises(ConfigError, match="cannot express this U-Net: model.groups=4 does not divide"):
        write_diffusers(tmp_path / "x", odd, {}, 0)
    assert not (tmp_path / "x").exists()


def test_nothing_is_overwritten(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        export_diffusers(str(LEGACY), str(tmp_path / "full"))
    (tmp_path / "a.ckpt").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        import_diffusers(str(tmp_path / "full"), str(tmp_path / "a.ckpt"))
    assert (tmp_path / "a.ckpt").read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.ckpt",
        "full",
    ]
    with pytest.raises(CheckpointError):
        export_diffusers(str(tmp_path / "a.ckpt"), str(tmp_path / "new"))


def test_two_converts_to_one_new_name_never_replace_each_other(tmp_path, monkeypatch):
    """The other convert finishes while this one works (simulated at the model card / the weights' read): this one
    is refused in one line, the other's output stays byte for byte, and no temporary file or folder is left."""
    card = diffusers_io.model_card

    def other_export_finishes_first(*args, **kwargs):
        (tmp_path / "pipe").mkdir(exist_ok=True)
        (tmp_path / "pipe" / "theirs.txt").write_text("the other export")
        return card(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(diffusers_io, "model_card", other_export_finishes_first)
        with pytest.raises(OutputExistsError, match="another process wrote it meanwhile"):
            export_diffusers(str(LEGACY), str(tmp_path / "pipe"))
    assert [p.name for p in (tmp_path / "pipe").iterdir()] == ["theirs.txt"] and len(list(tmp_path.iterdir())) == 1
    (tmp_path / "pipe" / "theirs.txt").unlink()
    export_diffusers(str(LEGACY), str(tmp_path / "pipe"))  # onto the empty folder: fine
    read = convert.read_diffusers

    def other_import_finishes_first(*args, **kwargs):
        (tmp_path / "new.ckpt").write_bytes(b"the other convert")
        return read(*args, **kwargs)

    monkeypatch.setattr(convert, "read_diffusers", other_import_finishes_first)
    with pytest.raises(OutputExistsError, match="another process wrote it meanwhile"):
        import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "new.ckpt"))
    assert (tmp_path / "new.ckpt").read_bytes() == b"the other convert"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.ckpt", "pipe"]


def test_class_conditional_model_exports_with_its_class_embedding(tmp_path):
    """num_classes=3 -> num_class_embeds=4 (the last row our null class); the same outputs per label, and back."""
    model = read_checkpoint(LEGACY)["ddpm_lab"]["config"]
    config = {**model, "model": {**model["model"], "_target_": "ddpm_lab.models.UNet", "num_classes": 3}}
    net = randomized(build_stored(config)[0], seed=4)
    write_diffusers(tmp_path / "pipe", config, net.state_dict(), global_step=0)
    theirs = UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet", low_cpu_mem_usage=False).eval()
    assert theirs.config.num_class_embeds == 4
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 10, 19]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t, class_labels=y).sample, net(x, t, y), rtol=0, atol=1e-5)
    sections, state = read_diffusers(tmp_path / "pipe")
    assert sections["model"]["num_classes"] == 3
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_export_marks_the_null_class_and_an_old_export_is_still_read_as_ours(tmp_path):
    model = read_checkpoint(LEGACY)["ddpm_lab"]["config"]
    config = {**model, "model": {**model["model"], "_target_": "ddpm_lab.models.UNet", "num_classes": 3}}
    write_diffusers(tmp_path / "pipe", config, build_stored(config)[0].state_dict(), global_step=0)
    unet_config = tmp_path / "pipe" / "unet" / "config.json"
    assert json.loads(unet_config.read_text())[NULL_CLASS_KEY] is True
    stripped = {k: v for k, v in json.loads(unet_config.read_text()).items() if k != NULL_CLASS_KEY}
    unet_config.write_text(json.dumps(stripped))  # as exports before the mark: the model card says ddpm_lab
    assert read_diffusers(tmp_path / "pipe")[0]["model"]["num_classes"] == 3
    (tmp_path / "pipe" / "README.md").unlink()  # nothing says ours: every row is a class
    assert read_diffusers(tmp_path / "pipe")[0]["model"]["num_classes"] == 4


def test_a_diffusers_model_with_ten_classes_and_no_null_row_keeps_ten(tmp_path):
    """num_class_embeds=10 from elsewhere: ten classes, every row one of them, and no null class, so guidance and
    unconditional samples are refused rather than drawn from a row that was never trained as one."""
    tiny = {"sample_size": 8, "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}
    tiny.update(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, attention_head_dim=None)
    theirs = save_pipeline(tmp_path / "pipe", {**tiny, "in_channels": 1, "out_channels": 1, "num_class_embeds": 10})
    import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "ten.ckpt"))
    loaded = load_model(tmp_path / "ten.ckpt")
    assert loaded.num_classes == 10 and loaded.net.class_emb.num_embeddings == 10 and not loaded.net.null_class
    x, t, y = torch.randn(10, 1, 8, 8), torch.arange(10) * 90, torch.arange(10)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, t, y), theirs(x, t, class_labels=y).sample, rtol=0, atol=1e-5)
    labels, ddim = torch.tensor([9, 0]), ddpm_lab.make_sampler("ddim", steps=2)
    assert ddpm_lab.generate(loaded.net, loaded.diffusion, 2, labels=labels, sampler=ddim).shape[0] == 2
    for kwargs, message in (
        ({"labels": labels, "guidance": 3.0}, "guidance=3: this model has no null"),
        ({}, "no labels"),
    ):
        with pytest.raises(ConfigError, match=message):
            ddpm_lab.generate(loaded.net, loaded.diffusion, 2, sampler=ddim, **kwargs)
    write_diffusers(tmp_path / "back", loaded.config, loaded.net.state_dict(), global_step=0)
    assert json.loads((tmp_path / "back" / "unet" / "config.json").read_text())["num_class_embeds"] == 10
    assert read_diffusers(tmp_path / "back")[0]["model"]["num_classes"] == 10


@pytest.mark.parametrize(
    ("name", "size", "params"), [("ddpm_cifar10_original", 32, 35_746_307), ("ddpm_256_original", 256, 113_673_219)]
)
def test_shipped_configs_build_the_published_architectures(name, size, params, cfg_train):
    """configs/model/<name>.yaml builds the network whose parameter count diffusers' config of it has."""
    cfg = cfg_train(f"model={name}", "dataset=image_folder", "dataset.root=x", f"dataset.image_size={size}")
    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    with torch.device("meta"):
        net = UNet(**model)
        theirs = UNet2DModel(**(CIFAR10 if size == 32 else {**LAYOUT_256, **LAYOUT_256_PUBLISHED}))
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in theirs.parameters()) == params
    assert diffusers_unet_config({"_target_": "ddpm_lab.models.UNet", **model})["norm_eps"] == 1e-6


def test_ckpt_path_accepts_a_converted_checkpoint_to_fine_tune(tmp_path, cfg_train):
    """The shipped model option with the same architecture passes train's ckpt_path= check, whatever its dropout
    (converted files store diffusers' 0.0); a converted file has no loop state, so resume= would refuse it."""
    tiny = {"sample_size": 16, "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}
    tiny.update(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, attention_head_dim=None)
    save_pipeline(tmp_path / "pipe", {**tiny, "flip_sin_to_cos": False}, num_train_timesteps=50)
    import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "tiny.ckpt"))
    base = [*TINY_TRAIN, "model=unet_tiny", f"dataset.root={tmp_path}", f"paths.output_root={tmp_path / 'out'}"]
    check_train_config(cfg_train(*base, "model.dropout=0.1", f"ckpt_path={tmp_path / 'tiny.ckpt'}"))
    with pytest.raises(ConfigError, match=r"different model \(model.time_cos_first differ\)"):
        check_train_config(cfg_train(*base, "+model.time_cos_first=true", f"ckpt_path={tmp_path / 'tiny.ckpt'}"))
    ckpt = read_checkpoint(tmp_path / "tiny.ckpt")
    assert ckpt["optimizer_states"] == [] and "loops" not in ckpt and ckpt["global_step"] == 0


def _entry_layout(path: Path) -> dict[str, list[str]]:
    """The keys of a checkpoint's ddpm_lab entry as written (not migrated), level by level."""
    entry = torch.load(path, weights_only=True, mmap=True)["ddpm_lab"]
    config = entry["config"]
    return {
        "entry": sorted(entry),
        "config": sorted(config),
        "dataset": sorted(config["dataset"]),
        "run": sorted(config["run"]),
        "format": [str(entry["format"])],
    }


def test_training_and_converted_checkpoints_carry_the_same_entry_layout(tmp_path, image_folder, cfg_train):
    """What DiffusionModule.on_save_checkpoint writes and what convert writes: one format, one layout."""
    short = ("trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2")
    run = tmp_path / "run"
    train(cfg_train(*TINY_TRAIN, *short, f"dataset.root={image_folder}", f"paths.output_dir={run}"))
    trained = run / "checkpoints" / "last.ckpt"
    tiny = {"sample_size": 16, "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}
    tiny.update(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, attention_head_dim=None)
    save_pipeline(tmp_path / "pipe", tiny, num_train_timesteps=50)
    converted = import_diffusers(str(tmp_path / "pipe"), str(tmp_path / "converted.ckpt"))
    assert _entry_layout(trained) == _entry_layout(converted)
    assert _entry_layout(trained)["format"] == [str(CHECKPOINT_FORMAT)]
    assert is_training_checkpoint(read_checkpoint(trained)) and not is_training_checkpoint(read_checkpoint(converted))


def test_without_diffusers_convert_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(ConfigError, match=r"converting needs diffusers, which is not installed: pip install"):
        import_diffusers("anything", "x.ckpt")
