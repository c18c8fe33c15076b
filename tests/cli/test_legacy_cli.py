"""Checkpoints and run folders written by ddpm_lab 0.1 (before the restructuring) still work through every
command: ``sample``, ``evaluate`` and ``resume=``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from helpers import FIXTURES, run_cli

LEGACY_RUN = FIXTURES / "legacy_run"


@pytest.fixture(scope="module")
def gray_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8x8 grayscale images in two class folders, like the data the legacy run was trained on."""
    root = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_sample_and_evaluate_accept_a_legacy_checkpoint(tmp_path: Path, gray_images: Path):
    ckpt = LEGACY_RUN / "checkpoints" / "last.ckpt"
    run_cli(
        "ddpm_lab.sample",
        f"ckpt='{ckpt}'",
        "n=3",
        "batch_size=3",
        "gif_frames=2",
        "paths.output_root=out",
        cwd=tmp_path,
    )
    (out,) = (tmp_path / "out" / "sample").iterdir()
    assert np.load(out / "samples.npz")["arr_0"].shape == (3, 8, 8, 1)
    proc = run_cli(
        "ddpm_lab.evaluate",
        f"ckpt='{ckpt}'",
        "features=tiny",
        "n=4",
        "batch_size=4",
        "kid_subsets=2",
        "dataset=image_folder",
        f"dataset.root={gray_images}",
        "paths.output_root=out",
        cwd=tmp_path,
    )
    assert "n=4 generated vs 24 real images" in proc.stdout


@pytest.mark.slow
def test_resume_continues_a_legacy_run(tmp_path: Path, gray_images: Path):
    run = shutil.copytree(LEGACY_RUN, tmp_path / "run")
    # Resume composes Hydra's config from configs/, never from the run's own .hydra/hydra.yaml: a run recorded
    # before the callback moved (config/run_folder.py -> config/hydra_callbacks.py) names a path gone since.
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    moved = "  callbacks:\n    run_folders:\n      _target_: ddpm_lab.config.run_folder.RunFolders"
    hydra_yaml.write_text(hydra_yaml.read_text().replace("  callbacks: {}", moved, 1))
    assert moved in hydra_yaml.read_text()
    run_cli("ddpm_lab.train", f"resume='{run}'", f"dataset.root={gray_images}", "trainer.max_steps=4", cwd=tmp_path)
    final = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 4
    assert final["ddpm_lab"]["config"]["model"]["_target_"] == "ddpm_lab.models.UNet"  # rewritten with today's names
    assert not (tmp_path / "outputs").exists()  # continued in place, no new run folder
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))  # its own last.ckpt replaced, even in a copied folder
