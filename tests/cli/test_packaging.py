"""A regular (non-editable) install runs too: the wheel carries the configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO_ROOT, TINY_TRAIN


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.glob("ddpm_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ddpm_lab/configs/train.yaml" in names
    assert "ddpm_lab/configs/model/unet_small.yaml" in names
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I would drop site-packages (torch); -P keeps cwd off sys.path; PYTHONPATH puts the wheel first.
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-P", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_package_uses_its_own_configs(installed: Path, tmp_path: Path):
    proc = run_installed(
        installed,
        tmp_path,
        "-c",
        "import ddpm_lab, ddpm_lab.config as c; print(ddpm_lab.__file__); print(c.config_dir())",
    )
    assert proc.returncode == 0, proc.stderr
    module_file, configs = proc.stdout.split()
    assert Path(module_file).is_relative_to(installed)
    assert Path(configs) == installed / "ddpm_lab" / "configs"


def test_installed_package_trains(installed: Path, tmp_path: Path, image_folder: Path):
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    proc = run_installed(
        installed,
        tmp_path,
        "-m",
        "ddpm_lab.train",
        *overrides,
        "trainer.max_steps=2",
        f"dataset.root={image_folder}",
        f"paths.output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "out").rglob("last.ckpt"))
