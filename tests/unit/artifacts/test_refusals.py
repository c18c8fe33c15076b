"""A checkpoint that cannot be trusted or used is refused with one line that says why (no torch advice to load it
unsafely), and a diverged one (non-finite weights) is refused instead of sampled to black."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.errors import CheckpointError
from helpers import TINY_TRAIN, ours_checkpoint, run_cli


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> dict:
    path = ours_checkpoint(
        tmp_path_factory.mktemp("refusals") / "clean.ckpt", [*TINY_TRAIN, f"dataset.root={image_folder}"]
    )
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_the_pickle_refusal_never_advises_weights_only_false(how: str, clean: dict, tmp_path: Path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    evil = {**clean, "state_dict": Payload(marker)}
    if how == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    message = str(e.value)
    assert "weights_only" not in message and "Weights only" not in message and "\n" not in message
    assert str(path) in message and "can run code, so it is refused" in message
    assert not marker.exists()


def test_a_truncated_checkpoint_still_says_what_is_wrong(clean: dict, tmp_path: Path):
    path = tmp_path / "cut.ckpt"
    torch.save(clean, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a torch checkpoint") as e:
        load_model(path)
    assert "weights_only" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(bad: float, clean: dict, tmp_path: Path):
    state = dict(clean["state_dict"])
    names = [k for k, v in state.items() if v.is_floating_point()]
    first, later = names[3], names[-1]
    for name in (later, first):
        state[name] = state[name].clone()
        state[name].view(-1)[0] = bad
    path = tmp_path / "diverged.ckpt"
    torch.save({**clean, "state_dict": state}, path)
    with pytest.raises(CheckpointError, match="non-finite") as e:
        load_model(path)
    assert str(path) in str(e.value) and f"weight {first} holds 1 non-finite" in str(e.value)
    torch.save(clean, tmp_path / "fine.ckpt")
    load_model(tmp_path / "fine.ckpt")  # the control


def test_sample_refuses_a_diverged_checkpoint_in_one_line(clean: dict, tmp_path: Path):
    state = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in clean["state_dict"].items()}
    path = tmp_path / "diverged.ckpt"
    torch.save({**clean, "state_dict": state}, path)
    proc = run_cli(
        "ddpm_lab.sample", f"ckpt='{path}'", "n=2", f"paths.output_root='{tmp_path / 'out'}'", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "non-finite" in line and str(path) in line
    assert not list(tmp_path.glob("out/**/*.png"))
