"""Hub ids for ``from_diffusers=``: a cached model converts offline, a missing one is one line, a local folder wins,
and a download fetches only what the conversion reads (the configs first, then one weights file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects

from ddpm_lab.artifacts.allow_list import build_model
from ddpm_lab.artifacts.diffusers_io import read_diffusers
from ddpm_lab.artifacts.hub import CONFIG_FILES, looks_like_hub_id, resolve_diffusers
from ddpm_lab.errors import ConfigError
from helpers import write_hub_cache

REPO = "someone/tiny-ddpm"


def save_pipeline(folder: Path, seed: int = 0, safetensors: bool = True) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20))
    pipeline.save_pretrained(folder, safe_serialization=safetensors)
    return unet


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, UNet2DModel]:
    folder = tmp_path_factory.mktemp("remote") / "pipe"
    return folder, save_pipeline(folder)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 (conftest sets it before huggingface_hub is imported; set here too, whatever came first)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def same_function(folder: Path, unet: UNet2DModel) -> None:
    sections, state = read_diffusers(folder)
    net = build_model(sections)
    net.load_state_dict(state)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0, 19])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), unet(x, t).sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "text, hub",
    [
        ("google/ddpm-cifar10-32", True),
        ("someone/tiny.ddpm_v2", True),
        ("ddpm-ema-cifar10-32", False),  # a folder name
        ("./google/ddpm", False),
        ("/abs/path", False),
        ("~/models/x", False),
        ("a/b/c", False),
        ("../x", False),
    ],
)
def test_what_reads_as_a_hub_id(text, hub):
    assert looks_like_hub_id(text) is hub


def test_a_cached_model_converts_offline(tmp_path, pipeline, offline):
    folder, unet = pipeline
    snapshot = write_hub_cache(tmp_path / "hub", REPO, folder, refs=("main", "v1"))
    assert constants.HF_HUB_OFFLINE and (snapshot / "unet" / "config.json").is_symlink()
    for revision in (None, "v1", snapshot.name):  # the default branch, a tag, a commit
        source = resolve_diffusers(REPO, revision, cache_dir=tmp_path / "hub")
        assert source.folder == snapshot and source.origin == f"{REPO}@{snapshot.name}"
    same_function(source.folder, unet)  # read like a local folder: the same checks, the same weights


def test_a_model_missing_offline_is_one_line_saying_what_to_do(tmp_path, pipeline, offline):
    write_hub_cache(tmp_path / "hub", REPO, pipeline[0])
    for repo, revision in (("someone/absent", None), (REPO, "v9")):
        with pytest.raises(ConfigError) as err:
            resolve_diffusers(repo, revision, cache_dir=tmp_path / "hub")
        message = str(err.value)
        assert "\n" not in message and f"from_diffusers={repo}" in message
        assert "HF_HUB_OFFLINE is set" in message and f"hf download {repo}" in message
        assert str(tmp_path / "hub") in message
    assert not (tmp_path / "hub" / "models--someone--absent").exists()  # nothing left behind


def test_a_local_folder_wins_over_the_hub_and_takes_no_revision(tmp_path, pipeline, offline, monkeypatch):
    write_hub_cache(tmp_path / "hub", REPO, pipeline[0])
    monkeypatch.chdir(tmp_path)
    local = save_pipeline(tmp_path / REPO, seed=1)  # ./someone/tiny-ddpm, other weights
    source = resolve_diffusers(REPO, cache_dir=tmp_path / "hub")
    assert source.folder == Path(REPO) and source.origin == str((tmp_path / REPO).resolve())
    same_function(source.folder, local)
    with pytest.raises(ConfigError, match=r"^revision=main picks a version .* is a local path: drop revision="):
        resolve_diffusers(REPO, "main", cache_dir=tmp_path / "hub")
    with pytest.raises(ConfigError, match="is not a valid Hugging Face Hub id"):
        resolve_diffusers("someone/bad--name", cache_dir=tmp_path / "hub")


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, list]:
    """An online Hub serving the files of ``<tmp>/remote``: snapshot_download copies those its patterns select."""
    remote, calls = tmp_path / "remote", []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None, **_):
        calls.append(list(allow_patterns))
        names = [p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()]
        snapshot = Path(cache_dir) / "snapshots" / "c0ffee"
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote / name, snapshot / name)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return remote, calls


def fetched(tmp_path: Path) -> list[str]:
    snapshot = tmp_path / "cache" / "snapshots" / "c0ffee"
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def test_a_download_fetches_the_configs_then_the_safetensors_weights_only(tmp_path, fake_hub):
    remote, calls = fake_hub
    unet = save_pipeline(remote)
    shutil.copy(remote / "unet" / "config.json", remote / "unet" / "diffusion_pytorch_model.bin")  # not wanted
    (remote / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"\0" * 64)  # nor this variant
    (remote / "samples.png").write_bytes(b"png")
    source = resolve_diffusers(REPO, cache_dir=tmp_path / "cache")
    assert calls == [CONFIG_FILES, ["unet/diffusion_pytorch_model.safetensors"]]
    assert fetched(tmp_path) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    same_function(source.folder, unet)


def test_a_repository_without_safetensors_gives_its_bin(tmp_path, fake_hub):
    remote, calls = fake_hub
    unet = save_pipeline(remote, safetensors=False)
    same_function(resolve_diffusers(REPO, cache_dir=tmp_path / "cache").folder, unet)
    assert calls[1:] == [["unet/diffusion_pytorch_model.safetensors"], ["unet/diffusion_pytorch_model.bin"]]


def test_a_pipeline_that_is_not_a_ddpm_is_refused_before_its_weights_come(tmp_path, fake_hub):
    remote, calls = fake_hub
    (remote / "unet").mkdir(parents=True)
    (remote / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    (remote / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 1024)
    with pytest.raises(
        ConfigError,
        match="is a StableDiffusionPipeline with a UNet2DConditionModel: only pipelines of a UNet2DModel",
    ):
        resolve_diffusers(REPO, cache_dir=tmp_path / "cache")
    assert calls == [CONFIG_FILES] and fetched(tmp_path) == ["model_index.json"]
