"""Security: a run folder from someone else whose Hydra record carries hostile entries is refused by ``resume=``
and ``evaluate`` through the real command lines (exit 2, one line), and the payload never runs; a run folder's
links and replayed locations never make a launch write outside it."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from ddpm_lab.config.real_images import compared_dataset
from ddpm_lab.train import main as train_main
from helpers import TINY_TRAIN, run_cli, snapshot
from mistakes import MAX_SECONDS, run_in_process


class Payload:
    """Unpickling it creates ``marker``: the side effect that must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a finished run, shipped with a pickle payload and a marker path it would create."""
    run = tmp_path / "shared_run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "PWNED"
    (run / "checkpoints" / "extra.pt").write_bytes(pickle.dumps(Payload(marker)))
    return run, marker


def assert_refused(proc, marker: Path, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not marker.exists()


def test_resume_refuses_an_added_callback_that_would_unpickle_a_shipped_file(hostile_run, tmp_path):
    run, marker = hostile_run
    overrides = run / ".hydra" / "overrides.yaml"
    overrides.write_text(
        overrides.read_text()
        + "- +callbacks.evil._target_=torch.load\n"
        + f"- +callbacks.evil.f={run / 'checkpoints' / 'extra.pt'}\n"
        + "- +callbacks.evil.weights_only=false\n"
    )
    before = snapshot(run)
    proc = run_cli("ddpm_lab.train", f"resume='{run}'", cwd=tmp_path, check=False)
    assert_refused(proc, marker, str(overrides), "+callbacks.evil._target_=torch.load")
    assert snapshot(run) == before  # not even this launch's .hydra/resume_<time>/ is left


def test_resume_refuses_a_resolver_in_a_recorded_override(hostile_run, tmp_path, monkeypatch):
    run, marker = hostile_run
    earlier = run / ".hydra" / "resume_2026-01-01_00-00-00"
    earlier.mkdir()
    (earlier / "overrides.yaml").write_text("- trainer.max_steps=8\n- paths.data_dir=${oc.env:DDPM_LAB_EVIL}\n")
    (earlier / "started").touch()  # as if that resume reached training: its record is replayed, so checked
    before = snapshot(run)
    proc = run_cli("ddpm_lab.train", f"resume='{run}'", cwd=tmp_path, check=False)
    assert_refused(proc, marker, str(earlier / "overrides.yaml"), "${oc.env:DDPM_LAB_EVIL}")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("dataset_lines", "culprit"),
    [
        ("  root: ${oc.env:DDPM_LAB_EVIL,/tmp}\n", "${oc.env:DDPM_LAB_EVIL,/tmp}"),
        ("  _target_: torch.load\n  f: CHECKPOINTS/extra.pt\n  weights_only: false\n", "torch.load"),
        ("  root: /tmp\n  # " + "x" * 1_100_000 + "\n", "over the 1.0 MB a Hydra record can be"),
    ],
    ids=["resolver", "target", "huge"],
)
def test_evaluate_refuses_a_hostile_run_config(hostile_run, tmp_path, dataset_lines: str, culprit: str):
    run, marker = hostile_run
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    head, rest = text.split("dataset:\n", 1)
    body = rest.splitlines(keepends=True)
    first_top = next(i for i, line in enumerate(body) if not line.startswith(" "))
    kept = [line for line in body[:first_top] if not line.startswith(("  root:", "  _target_:"))]
    lines = dataset_lines.replace("CHECKPOINTS", str(run / "checkpoints"))
    config.write_text(head + "dataset:\n" + lines + "".join(kept + body[first_top:]))
    before = snapshot(run)
    out = tmp_path / "eval_out"
    proc = run_cli(
        "ddpm_lab.evaluate",
        f"ckpt='{run / 'checkpoints' / 'last.ckpt'}'",
        "features=tiny",
        "n=8",
        f"paths.output_root='{out}'",
        cwd=tmp_path,
        check=False,
    )
    assert_refused(proc, marker, str(config), culprit)
    assert snapshot(run) == before
    assert not out.exists() or not any(out.rglob("results.json"))


def test_evaluate_writes_decoded_caches_only_where_it_is_told_not_where_the_run_config_says(hostile_run, tmp_path):
    run, _ = hostile_run
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "  cache_dir: ${paths.cache_dir}\n" in text  # what training records
    config.write_text(text.replace("  cache_dir: ${paths.cache_dir}\n", "  cache_dir: ${oc.env:HOME}/elsewhere\n"))
    dataset = compared_dataset(None, str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "ours"), {})
    assert dataset["cache_dir"] == str(tmp_path / "ours")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the run folder that a hostile link aims at (another user's notes, say)."""
    target = tmp_path / "elsewhere" / "notes.txt"
    target.parent.mkdir()
    target.write_text("SECRET first line\nsecond line\n")
    return target


def test_a_lock_that_is_a_symlink_neither_truncates_nor_reveals_its_target(hostile_run, outside: Path, tmp_path):
    """``resume=`` through the real command line: the ``.lock`` is opened without following links."""
    run, marker = hostile_run
    (run / ".lock").symlink_to(outside)
    before, target = snapshot(run), outside.read_bytes()
    proc = run_cli("ddpm_lab.train", f"resume='{run}'", "trainer.max_steps=8", cwd=tmp_path, check=False)
    assert_refused(proc, marker, str(run / ".lock"), "symbolic link")
    assert "SECRET" not in proc.stderr + proc.stdout
    assert outside.read_bytes() == target and snapshot(run) == before


def test_a_fresh_launch_into_a_folder_whose_lock_is_a_symlink(image_folder: Path, outside: Path, tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / ".lock").symlink_to(outside)
    target = outside.read_bytes()
    argv = [*TINY_TRAIN, f"dataset.root={image_folder}", f"hydra.run.dir={folder}"]
    outcome = run_in_process(train_main, argv, tmp_path)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.status == 2 and len(lines) == 1 and f"{folder / '.lock'} is a symbolic link" in lines[0], lines
    assert "SECRET" not in outcome.stderr and outcome.seconds < MAX_SECONDS
    assert outside.read_bytes() == target and sorted(p.name for p in folder.iterdir()) == [".lock"]


@pytest.mark.parametrize(
    ("replayed", "key"),
    [
        ("callbacks.model_checkpoint.dirpath=OTHER/checkpoints", "callbacks.model_checkpoint.dirpath"),
        ("callbacks.model_checkpoint.filename=../../other_run/checkpoints/last", "callbacks.model_checkpoint.filename"),
    ],
    ids=["dirpath", "filename"],
)
def test_a_replayed_checkpoint_place_never_overwrites_another_run(tiny_run: Path, tmp_path, replayed: str, key: str):
    """A shared run's record aims its checkpoints at another run: refused in one line naming the key; neither run
    changes by a byte. (In this process: the command line's own path is covered above.)"""
    run, other = tmp_path / "shared" / "run", tmp_path / "other_run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run, other)
    overrides = run / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- {replayed.replace('OTHER', str(other))}\n")
    before, theirs = snapshot(run), snapshot(other)
    outcome = run_in_process(train_main, [f"resume={run}", "trainer.max_steps=8"], tmp_path)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.status == 2 and len(lines) == 1 and "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert f"{overrides}: refusing to replay" in lines[0] and f"type {key}=<value>" in lines[0], lines
    assert outcome.seconds < MAX_SECONDS
    assert snapshot(run) == before and snapshot(other) == theirs
