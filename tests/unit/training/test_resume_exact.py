"""A resumed run is the run never stopped, to the bit (issue 23): stop anywhere, continue from the checkpoint, and
every tensor of the checkpoints (weights, EMA, optimizer moments, random streams, loss history) and every logged
loss equals the uninterrupted run's. In-process runs of ``ddpm_lab.train.train``, stopped by a real SIGTERM or
SIGINT sent to this process (``stop_probe.StopAt``); the command line's own SIGTERM and ``resume=`` are in
``tests/cli/test_resume_cli.py``."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from ddpm_lab.train import train
from helpers import TINY_TRAIN

# Every random stream a step can draw from: label dropout (conditioning=class), dropout masks, flips, t from the
# importance sampler's loss history (full after 7 batches at T = 5), ε. 32 training images of batch 8: an epoch is
# 4 batches; 2 batches per optimizer step; validation every 4 batches; a checkpoint every step to compare with.
EVERYTHING = (
    *TINY_TRAIN,
    "dataset.image_size=8",
    "dataset.val_size=16",
    "dataset.flip=true",
    "conditioning=class",
    "model.dropout=0.1",
    "schedule.timesteps=5",
    "diffusion.variance=learned_range",
    "diffusion.loss=hybrid",
    "diffusion.importance_sampling=true",
    "trainer.accumulate_grad_batches=2",
    "trainer.max_steps=6",
    "trainer.val_check_interval=4",
    "callbacks.sample_grid.sampler.steps=3",
    "callbacks.sample_grid.every_n_steps=2",
    "callbacks.sample_grid.guidance_strip=[0,2]",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.model_checkpoint.save_last=false",  # PreemptionGuard writes last.ckpt wherever a launch ends
    "logger=csv",
    "+callbacks.stop._target_=stop_probe.StopAt",  # this folder is on sys.path
)
EXIT_STATUS = {"none": None, "should_stop": None, "sigterm": 143, "sigterm_in_step": 143, "sigint": 130}


def tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor anywhere in a checkpoint, by its path of keys."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def differences(a: Path, b: Path) -> list[str]:
    """The tensors that differ between two checkpoints, or that only one holds; ModelCheckpoint's are left out
    (which files it keeps: each launch here writes into a folder of its own, where ``resume=`` stays in one)."""
    x, y = ({k: v for k, v in tensors(read_checkpoint(c)).items() if "ModelCheckpoint" not in k} for c in (a, b))
    return sorted(x.keys() ^ y.keys()) + [k for k in x.keys() & y.keys() if not torch.equal(x[k], y[k])]


def fit(cfg_train, out: Path, *overrides: str, stop: tuple[str, int] | None = None) -> int | None:
    """``train`` one launch into ``out``; the exit status when a signal stopped it, else None."""
    how, batches = stop or ("none", 0)
    stopping = (f"+callbacks.stop.how={how}", f"+callbacks.stop.batches={batches}")
    cfg = cfg_train(*EVERYTHING, *overrides, f"paths.output_dir={out}", *stopping)
    try:
        train(cfg)
    except SystemExit as e:
        return e.code
    return None


def losses(out: Path) -> dict[str, float]:
    """What a launch logged: ``<step>/<batch>`` -> train/loss, ``val/<step>`` -> val/loss."""
    return torch.load(out / "losses.pt", weights_only=True)


@pytest.fixture(scope="module")
def root(image_folder: Path) -> str:
    return f"dataset.root={image_folder}"


@pytest.fixture(scope="module")
def straight(cfg_train, root, tmp_path_factory) -> Path:
    """The run never stopped: 6 steps, a checkpoint at each."""
    out = tmp_path_factory.mktemp("straight")
    assert fit(cfg_train, out, root) is None
    return out


def test_a_run_stopped_anywhere_and_resumed_is_the_run_never_stopped(straight, cfg_train, root, tmp_path):
    """Continued from the periodic checkpoint of step 1 (as after ``kill -9``), then four stops in a row, each
    resumed from the checkpoint it saved: SIGTERM mid-epoch inside an accumulation window (held to the window's
    step, then cutting that step's validation short), Ctrl-C inside a window, SIGTERM during the step that ends an
    epoch (cutting its sample grid, then its validation), ``max_time`` (Lightning's should_stop) inside a window.
    Each checkpoint is the uninterrupted run's at that step, to the bit, and each launch logged the uninterrupted
    run's losses (train and val), all of them once."""
    stops = [("sigterm", 1), ("sigint", 1), ("sigterm_in_step", 2), ("should_stop", 1), None]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (xdist ignores SIGINT)
    ckpt, reference, logged = straight / "checkpoints" / "step_0000001.ckpt", losses(straight), {}
    try:
        for launch, stop in enumerate(stops):
            out = tmp_path / f"launch{launch}"
            assert fit(cfg_train, out, root, f"ckpt_path={ckpt}", stop=stop) == EXIT_STATUS[stop[0] if stop else "none"]
            ckpt = out / "checkpoints" / "last.ckpt"
            step = read_checkpoint(ckpt)["global_step"]
            assert step == launch + 2  # every stop waited for its accumulation window's optimizer step
            assert differences(ckpt, straight / "checkpoints" / f"step_{step:07d}.ckpt") == [], step
            got = losses(out)
            extra = got.keys() - reference.keys()  # max_time: Lightning validates once more where it stops
            assert extra <= ({f"val/{step}"} if stop and stop[0] == "should_stop" else set()), step
            got = {key: value for key, value in got.items() if key not in extra}
            assert got == {key: reference[key] for key in got}, step
            logged.update(got)
    finally:
        signal.signal(signal.SIGINT, previous)
    order = list(reference)  # in the order logged; "1/1" is the batch that completed step 1
    after_step_1 = {key: reference[key] for key in order[order.index("1/1") + 1 :]}
    assert logged == after_step_1 and {"val/2", "val/4", "val/6"} <= logged.keys()
    # Step 4's sample grid was cut (EMA, logs and checkpoint of the step still complete: compared above).
    assert (straight / "samples" / "step_0000004.png").is_file()
    assert not (tmp_path / "launch2" / "samples" / "step_0000004.png").exists()
    # Step 2's validation, cut short by SIGTERM, ran again after the resume, and the periodic checkpoint that
    # waited for it was saved then.
    rerun = tmp_path / "launch1" / "checkpoints" / "step_0000002.ckpt"
    assert differences(rerun, straight / "checkpoints" / "step_0000002.ckpt") == []


@pytest.fixture
def restore_determinism():
    """``deterministic=true`` switches process-wide torch settings: give the next tests the ones they had."""
    before = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(before[0])
    if before[1] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[1]


def test_the_same_command_twice_gives_the_same_bits_with_or_without_deterministic(
    straight, cfg_train, root, tmp_path, restore_determinism
):
    for run in ("a", "b"):
        assert fit(cfg_train, tmp_path / run, root, "deterministic=true", "trainer.max_steps=1") is None
        assert torch.are_deterministic_algorithms_enabled()
        assert (
            differences(tmp_path / run / "checkpoints" / "last.ckpt", straight / "checkpoints" / "step_0000001.ckpt")
            == []
        )
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_resume_with_another_batch_size_continues_and_warns_once(straight, cfg_train, root, tmp_path):
    with pytest.warns(UserWarning, match="not bit-exactly") as caught:
        fit(
            cfg_train,
            tmp_path,
            root,
            f"ckpt_path={straight / 'checkpoints' / 'step_0000005.ckpt'}",
            "dataset.batch_size=4",
        )
    notes = [str(w.message) for w in caught if "bit-exactly" in str(w.message)]
    assert len(notes) == 1 and notes[0].startswith("resuming with batch_size 4 (was 8): the run continues")
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6
