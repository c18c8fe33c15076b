"""Loading a checkpoint never runs code: pickled payloads and stored configs that would are refused."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.errors import CheckpointError
from helpers import TINY_TRAIN, ours_checkpoint


class Payload:
    """Unpickling this creates ``marker`` (what a hostile checkpoint would do with a worse command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> dict:
    tmp = tmp_path_factory.mktemp("untrusted")
    path = ours_checkpoint(tmp / "clean.ckpt", [*TINY_TRAIN, f"dataset.root={image_folder}"])
    return torch.load(path, weights_only=True)


def test_clean_checkpoint_loads(clean: dict, tmp_path: Path):
    """The control: the unmodified checkpoint builds its model."""
    torch.save(clean, tmp_path / "clean.ckpt")
    loaded = load_model(tmp_path / "clean.ckpt")
    assert loaded.diffusion.num_timesteps == 50


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_payload_is_refused_and_never_runs(how: str, clean: dict, tmp_path: Path):
    marker = tmp_path / "pwned"
    # The payload is real: plain unpickling runs it.
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    evil = {**clean, "state_dict": Payload(marker)}
    path = tmp_path / "evil.ckpt"
    if how == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* safely"):
        load_model(path)
    assert not marker.exists()


def _set(config: dict, where: str, value) -> dict:
    config = copy.deepcopy(config)
    node = config
    *parents, last = where.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return config


def _with_marker(value, marker: Path):
    """``value`` with ``{marker}`` in its strings replaced by the marker file's path."""
    if isinstance(value, dict):
        return {k: _with_marker(v, marker) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_marker(v, marker) for v in value]
    return value.replace("{marker}", str(marker)) if isinstance(value, str) else value


SYSTEM = "touch {marker}"
# (section path, value): each would make instantiate run a command or reach outside the allow-list.
STORED_CONFIG_ATTACKS = {
    "os.system": ("model", {"_target_": "os.system", "command": SYSTEM}),
    "builtins.eval": (
        "schedule",
        {"_target_": "builtins.eval", "_args_": ["__import__('os').system('" + SYSTEM + "')"]},
    ),
    "subprocess.call": ("sampler", {"_target_": "subprocess.call", "args": SYSTEM, "shell": True}),
    "module attribute path": ("model._target_", "ddpm_lab.train.os.system"),
    "nested in a list": ("model.channel_mults", [1, {"_target_": "os.system", "_args_": [SYSTEM]}]),
    "target on a sub-node": ("diffusion.extra", {"_target_": "os.system", "_args_": [SYSTEM]}),
    "partial": ("sampler", {"_target_": "os.system", "_partial_": True, "_args_": [SYSTEM]}),
    "allowed target in another section": ("sampler._target_", "ddpm_lab.models.UNet"),
    "old name of an allowed target in another section": ("sampler._target_", "ddpm_lab.unet.UNet"),
    "instantiate option": ("sampler._convert_", "all"),
    "interpolation": ("model.base_channels", "${oc.env:HOME}"),
    "non-string target": ("model._target_", ["os", "system"]),
}


@pytest.mark.parametrize("attack", list(STORED_CONFIG_ATTACKS))
def test_stored_config_outside_allow_list_is_refused(attack: str, clean: dict, tmp_path: Path):
    marker = tmp_path / "pwned"
    where, value = STORED_CONFIG_ATTACKS[attack]
    value = _with_marker(value, marker)
    config = _set(clean["ddpm_lab"]["config"], where, value)
    path = tmp_path / "evil.ckpt"
    torch.save({**clean, "ddpm_lab": {**clean["ddpm_lab"], "config": config}}, path)
    with pytest.raises(CheckpointError, match="refusing the config stored in"):
        load_model(path)
    assert not marker.exists()


def test_weights_of_another_model_are_refused(clean: dict, tmp_path: Path):
    wide = ours_checkpoint(tmp_path / "wide.ckpt", [*TINY_TRAIN, "dataset.root=unused", "model.base_channels=16"])
    mixed = {**clean, "state_dict": torch.load(wide, weights_only=True)["state_dict"]}
    torch.save(mixed, tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match="do not fit the model its config builds"):
        load_model(tmp_path / "mixed.ckpt")


@pytest.mark.parametrize(
    "content", [None, b"", b"PK\x03\x04 cut", os.urandom(2048)], ids=["missing", "empty", "truncated", "random"]
)
def test_broken_files_are_refused_by_name(content: bytes | None, tmp_path: Path):
    path = tmp_path / "model.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="model.ckpt"):
        load_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ddpm_lab.sample", "ddpm_lab.evaluate"])
def test_sample_and_evaluate_refuse_malicious_checkpoints(command: str, clean: dict, tmp_path: Path):
    """Through the real command lines: a pickle payload and an os.system config, each one line, exit 2, no file."""
    from helpers import run_cli

    marker = tmp_path / "pwned"
    pickled = tmp_path / "pickled.ckpt"
    torch.save({**clean, "state_dict": Payload(marker)}, pickled)
    configured = tmp_path / "configured.ckpt"
    config = _set(clean["ddpm_lab"]["config"], "model", {"_target_": "os.system", "command": f"touch {marker}"})
    torch.save({**clean, "ddpm_lab": {**clean["ddpm_lab"], "config": config}}, configured)
    for path, message in ((pickled, "cannot read checkpoint"), (configured, "refusing the config stored in")):
        proc = run_cli(
            command,
            f"ckpt='{path}'",
            "features=tiny" if command.endswith("evaluate") else "n=2",
            f"paths.output_root={tmp_path / 'out'}",
            cwd=tmp_path,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not marker.exists()
    assert not list(tmp_path.glob("out/**/*.png"))  # refused before any sampling


@pytest.mark.parametrize(
    ("field", "value", "culprit"),
    [
        ("global_step", "abc", "its global_step must be a non-negative integer, got 'abc'"),
        ("global_step", 1.5, "its global_step must be a non-negative integer, got 1.5"),
        ("global_step", -3, "its global_step must be a non-negative integer, got -3"),
        ("global_step", True, "its global_step must be a non-negative integer, got True"),
        ("global_step", torch.tensor(7), "its global_step must be a non-negative integer, got a tensor"),
        ("state_dict", [1, 2], "its state_dict must be a dict, got [1, 2]"),
        ("current_model_state", "raw", "its current_model_state must be a dict"),
        ("optimizer_states", {"a": 1}, "its optimizer_states must be a list"),
        ("class_names", ["a"] * 100_001, "stores 100001 class names, over the 100000"),
        ("class_names", ["a", "b" * 10_000], "its class name 1 is 10000 characters long, over the 200"),
        ("class_names", ["a", 7], "its stored class_names must be a list of names"),
        ("class_names", "ab", "its stored class_names must be a list of names, got 'ab'"),
        ("image_size", 0, "its stored dataset.image_size must be a positive integer, got 0"),
        ("channels", "3", "its stored dataset.channels must be a positive integer, got '3'"),
    ],
)
def test_fields_of_the_wrong_type_or_absurd_size_are_refused_naming_them(
    clean: dict, tmp_path: Path, field: str, value, culprit: str
):
    """Every reader (``load_model``, ``resume=``, ``ckpt_path=``, ``convert``) goes through ``read_checkpoint``."""
    ckpt = copy.deepcopy(clean)
    if field in ("class_names", "image_size", "channels"):
        ckpt["ddpm_lab"]["config"]["dataset"][field] = value
    else:
        ckpt[field] = value
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as refused:
        load_model(path)
    assert culprit in str(refused.value) and str(path) in str(refused.value) and len(str(refused.value)) < 300
