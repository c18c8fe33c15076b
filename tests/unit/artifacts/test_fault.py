"""Faults while saving and damaged checkpoints: the previous good checkpoint survives and resume falls back to it."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.checkpoint import write_entry
from ddpm_lab.config.resume import resume_checkpoint as last_checkpoint
from ddpm_lab.errors import ResumeError
from ddpm_lab.training.checkpoint_io import AtomicCheckpointIO
from helpers import TINY_TRAIN, run_cli


def _checkpoints(run: Path, names: list[str]) -> Path:
    """Checkpoints saved in the order given (each newer than the one before), global_step = position."""
    folder = run / "checkpoints"
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        checkpoint = {"global_step": 3 * (i + 1), "state_dict": {}}
        write_entry(checkpoint, {})
        torch.save(checkpoint, folder / name)
        os.utime(folder / name, (time.time() - 100 + i, time.time() - 100 + i))
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_resume_skips_damaged_newest_checkpoints(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = _checkpoints(tmp_path, ["step_0000003.ckpt", "step_0000006.ckpt", "last.ckpt"])
    _truncate(folder / "last.ckpt")
    (folder / "step_0000006.ckpt").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(tmp_path) == folder / "step_0000003.ckpt"
    assert "instead of the damaged last.ckpt, step_0000006.ckpt" in caplog.text
    assert (folder / "last.ckpt").exists()  # kept for inspection, not deleted


def test_resume_says_clearly_when_every_checkpoint_is_damaged(tmp_path: Path):
    folder = _checkpoints(tmp_path, ["step_0000003.ckpt", "last.ckpt"])
    for path in folder.iterdir():
        _truncate(path)
    with pytest.raises(ResumeError, match="every checkpoint in .* is damaged .*start a new run"):
        last_checkpoint(tmp_path)


def _saved_checkpoint(tmp_path: Path) -> tuple[AtomicCheckpointIO, Path, bytes]:
    """An AtomicCheckpointIO, the last.ckpt it wrote at step 3, and that file's bytes (to check it stays intact)."""
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.ones(4)}}, path)
    return io, path, path.read_bytes()


def test_ctrl_c_in_the_middle_of_a_save_stays_a_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Seen under load: SIGINT inside torch.save came out as the zip writer's RuntimeError, so the run neither
    saved last.ckpt on Ctrl-C nor said how to resume. It must stay a KeyboardInterrupt, the old file intact."""
    io, path, before = _saved_checkpoint(tmp_path)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 240128 vs 237744")  # noqa: B904

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 6, "state_dict": {"w": torch.zeros(4)}}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    io, path, before = _saved_checkpoint(tmp_path)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"global_step": 6, "state_dict": {"w": torch.zeros(4)}}, path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written temp file left


@pytest.mark.slow
def test_resume_after_corrupting_the_newest_checkpoint(tmp_path: Path, image_folder: Path):
    overrides = [*TINY_TRAIN, f"dataset.root={image_folder}", f"paths.output_root={tmp_path / 'out'}"]
    run_cli("ddpm_lab.train", *overrides, cwd=tmp_path, timeout=240)
    (run,) = (tmp_path / "out" / "train").iterdir()
    folder = run / "checkpoints"
    _truncate(folder / "last.ckpt")
    _truncate(folder / "step_0000006.ckpt")
    proc = run_cli("ddpm_lab.train", f"resume='{run}'", "trainer.max_steps=9", cwd=tmp_path, timeout=240)
    output = proc.stdout + proc.stderr
    assert "resuming from step_0000003.ckpt instead of the damaged" in output, output[-3000:]
    assert torch.load(folder / "step_0000009.ckpt", weights_only=True)["global_step"] == 9
