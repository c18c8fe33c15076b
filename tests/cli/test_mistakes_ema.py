"""``python -m ddpm_lab.ema``: every mistake and fault in this table is one ``error:`` line, exit status 2, found
before anything is written, and leaves every file that was there before as it was.

The harness is ``tests/cli/mistakes.py``; the cases run ``main()`` in this process, one through the real command line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.posthoc_ema import snapshot_path, write_posthoc_checkpoints, write_snapshot
from ddpm_lab.ema import main
from helpers import TINY_TRAIN, ours_checkpoint, run_cli
from mistakes import case, check_case, counts, run_in_process, run_subprocess, write_inputs

RUN = "ckpt={tmp}/run/checkpoints/last.ckpt"

CASES = [
    case("keys", [RUN, "sigma_rels=0.1"], "sigma_rels is not a setting of ema.yaml"),
    case("missing", "sigma_rel=0.1", "ckpt is required but not set"),
    case("types", [RUN, "sigma_rel=abc"], "sigma_rel must be a list of numbers, got 'abc'"),
    case("types", [RUN, "sigma_rel=[0.1,abc]"], "sigma_rel must be a number, got 'abc'"),
    case("types", ["ckpt=''", "sigma_rel=0.1"], "ckpt= must be a path"),
    case("types", [RUN, "out=''"], "out= must be a path"),
    case("ranges", [RUN, "sigma_rel=0.5"], "sigma_rel=0.5 is out of range: an EMA length σ_rel is in (0, 0.2887)"),
    case("ranges", [RUN, "sigma_rel=0,0.1"], "sigma_rel=0 is out of range"),
    case("ranges", [RUN, "sigma_rel=[]"], "sigma_rel is an empty list"),
    case("ranges", [RUN, "sigma_rel=0.1,0.15,0.1"], "sigma_rel lists 0.1 more than once"),
    # checkpoints
    case("checkpoints", "ckpt={tmp}/missing.ckpt", "ckpt={tmp}/missing.ckpt does not exist"),
    case("checkpoints", "ckpt={tmp}/random.ckpt", "cannot read checkpoint {tmp}/random.ckpt"),
    case("checkpoints", "ckpt={tmp}/hostile.ckpt", "{tmp}/hostile.ckpt"),
    case("checkpoints", "ckpt={tmp}/good.ckpt", "holds no post-hoc EMA snapshots: it was not trained with callbacks="),
    case(
        "checkpoints",
        "ckpt={tmp}/run/posthoc_ema/ema_0.1_step_0000004.ckpt",
        "is itself a post-hoc EMA checkpoint (sigma_rel=0.1): pass the run's training checkpoint",
    ),
    # the snapshots
    case("data", "ckpt={tmp}/other/checkpoints/last.ckpt", "snapshot_0000002.pt belongs to another run (id 'someone"),
    case("data", "ckpt={tmp}/reshaped/checkpoints/last.ckpt", "comes from a run of another model"),
    case("data", "ckpt={tmp}/damaged/checkpoints/last.ckpt", "cannot read post-hoc EMA snapshot {tmp}/damaged/"),
    case("data", [RUN, "snapshots={tmp}/nowhere"], "the snapshots of {tmp}/run/checkpoints/last.ckpt are not in"),
    # nothing is overwritten
    case("output", [RUN, "sigma_rel=0.2,0.1"], "ema_0.1_step_0000004.ckpt already exists: nothing was written"),
    case("output", [RUN, "out={tmp}/a_file"], "{tmp}/a_file is a file, not a folder"),
]


def broken_copy(tmp: Path, name: str, change) -> None:
    """A copy of the run whose step-2 snapshot ``change`` rewrites (or damages)."""
    shutil.copytree(tmp / "run", tmp / name, ignore=shutil.ignore_patterns("ema_*.ckpt"))
    change(snapshot_path(tmp / name / "posthoc_ema", 2))


def rewrite(path: Path, run_id: str | None = None, reshape: bool = False) -> None:
    raw = torch.load(path, weights_only=True)
    profiles = raw["profiles"]
    if reshape:
        name = next(iter(profiles[0]))
        profiles = [{**p, name: p[name].flatten()[:-1]} for p in profiles]
    path.unlink()
    write_snapshot(path.parent, 2, run_id or raw["posthoc_ema"]["run_id"], raw["posthoc_ema"]["sigma_rels"], profiles)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory, posthoc_run: Path) -> Path:
    root = tmp_path_factory.mktemp("mistakes_ema")
    write_inputs(root, lambda p: ours_checkpoint(p, [*TINY_TRAIN, f"dataset.root={root / 'images'}"]))
    shutil.copytree(posthoc_run, root / "run")
    write_posthoc_checkpoints(root / "run" / "checkpoints" / "last.ckpt", [0.1])
    broken_copy(root, "other", lambda p: rewrite(p, run_id="someone-else"))
    broken_copy(root, "reshaped", lambda p: rewrite(p, reshape=True))
    broken_copy(root, "damaged", lambda p: p.write_bytes(p.read_bytes()[:200]))
    return root


def test_the_table_is_varied():
    assert len(CASES) >= 20 and len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {"keys", "missing", "types", "ranges", "checkpoints", "data", "output"}


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), (), item, tmp)


def test_a_copied_snapshot_of_the_same_run_is_accepted(tmp: Path, tmp_path: Path):
    """The refusals above are about the file, not about copying: the run's own snapshot rewritten as it was passes."""
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run, ignore=shutil.ignore_patterns("ema_*.ckpt"))
    rewrite(snapshot_path(run / "posthoc_ema", 2))
    (path,) = write_posthoc_checkpoints(run / "checkpoints" / "last.ckpt", [0.07], out=tmp_path / "out")
    assert path == tmp_path / "out" / "ema_0.07_step_0000004.ckpt"
    assert torch.load(path, weights_only=True)["posthoc_ema"]["snapshot_steps"] == [2, 4]


@pytest.mark.slow
def test_the_command_line_reads_a_comma_list_and_refuses_in_one_line(tmp: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = run_cli(
        "ddpm_lab.ema", f"ckpt={tmp}/run/checkpoints/last.ckpt", "sigma_rel=0.05,0.12", f"out={out}", cwd=tmp
    )
    assert sorted(p.name for p in out.iterdir()) == ["ema_0.05_step_0000004.ckpt", "ema_0.12_step_0000004.ckpt"]
    assert "python -m ddpm_lab.evaluate -m ckpt=" in proc.stdout
    refused = run_subprocess("ddpm_lab.ema", [f"ckpt={tmp}/good.ckpt"], tmp)
    assert refused.status == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: ")
