"""Helpers the tests share (import them: ``from helpers import run_cli, snapshot, ...``); pytest fixtures stay in
``conftest.py``. Paths of this checkout, snapshots of folders, composed configs, checkpoints of untrained models,
the command-line runner, tiny image folders and the overrides of a seconds-long training run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image

from ddpm_lab.artifacts.checkpoint import weights_checkpoint
from ddpm_lab.config import config_dir, stored_config
from ddpm_lab.config.conditioning import condition_on_dataset
from ddpm_lab.models import UNet

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below ``root``: relative path -> sha256 of its bytes (``dir`` for folders).

    Two equal snapshots mean nothing was added, removed or changed by a byte.
    """
    return {str(p.relative_to(root)): _digest(p) if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _digest(path: Path) -> str:
    """sha256 of a file, read in chunks (a large file never sits in memory whole)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fake_run(output_root: Path) -> Path:
    """An earlier run's folder under ``output_root`` with files that must survive every failed launch byte for byte."""
    run = output_root / "train" / "2020-01-01_00-00-00_earlier"
    for rel, data in {
        "checkpoints/last.ckpt": b"ckpt",
        "tensorboard/events.out.tfevents.1": b"tb",
        "samples/step_1.png": b"png",
        ".hydra/overrides.yaml": b"[]\n",
        "train.log": b"log\n",
    }.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    return run


def compose_config(name: str, overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """``configs/<name>.yaml`` composed with ``overrides`` as the command line would.

    ``hydra=True`` also composes the ``hydra`` node and installs it as ``@hydra.main`` does, so ``${hydra:...}``
    (e.g. ``paths.output_dir``) resolves.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=hydra)
    if hydra:
        HydraConfig.instance().set_config(cfg)
    return cfg


Composer = Callable[..., DictConfig]


def ours_checkpoint(path: Path, overrides: Sequence[str]) -> Path:
    """A ddpm_lab checkpoint (untrained weights) for the model that ``overrides`` compose, taken as they are."""
    return save_untrained(path, compose_config("train", overrides))


def conditional_checkpoint(path: Path, overrides: Sequence[str]) -> Path:
    """A ``conditioning=class`` checkpoint (untrained weights): classes and their names from the dataset."""
    cfg = compose_config("train", [*overrides, "conditioning=class"])
    condition_on_dataset(cfg)
    return save_untrained(path, cfg)


def save_untrained(path: Path, cfg: DictConfig) -> Path:
    config = stored_config(cfg)
    net = UNet(**{k: v for k, v in config["model"].items() if k != "_target_"})
    torch.save(weights_checkpoint(config, net.state_dict()), path)
    return path


# Two threads per process; one under pytest-xdist (``-n 2``: a worker per core), since processes that each
# spin two threads on two cores slow each other down 3-4x.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


def cli_env() -> dict[str, str]:
    """The environment of a subprocess that imports this checkout's ddpm_lab."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", str(THREADS))
    return env


def run_cli(
    module: str, *overrides: str, cwd: Path, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <overrides>`` in a subprocess that imports this checkout's ddpm_lab."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(overrides)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def start_cli(module: str, *overrides: str, cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``python -m <module> <overrides>`` without waiting (to signal it), stdout and stderr into ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *overrides],
            cwd=cwd,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            # pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored across exec: Python would
            # then never raise KeyboardInterrupt, and a test's Ctrl-C would be lost. Give the child the default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def write_image_folder(
    root: Path, n_per_class: int = 24, size: int = 20, classes: tuple[str, ...] = ("a", "b"), mode: str = "RGB"
) -> Path:
    """A tiny image-folder dataset of smooth random blobs (PNG), one sub-folder per class."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            yy, xx = np.mgrid[:size, :size]
            cy, cx = rng.uniform(4, size - 4, 2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
            img = (blob[..., None] * rng.uniform(80, 255, 3)).astype(np.uint8)
            Image.fromarray(img if mode == "RGB" else img[..., 0], mode=mode).save(root / c / f"{i:03d}.png")
    return root


# Overrides that make `python -m ddpm_lab.train` finish in seconds on a CPU.
TINY_TRAIN = (
    "debug=default",
    "trainer=cpu",
    "dataset=image_folder",
    "dataset.image_size=16",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.sample_grid.every_n_steps=3",
    "callbacks.sample_grid.n=4",
    "callbacks.sample_grid.sampler.steps=5",
    "callbacks.progress_bar=null",
    "schedule.timesteps=50",
    "dataset.batch_size=8",
    "dataset.val_size=8",
)


def write_hub_cache(cache: Path, repo_id: str, folder: Path, refs: Sequence[str] = ("main",)) -> Path:
    """``folder``'s files as a Hugging Face Hub cache holds a downloaded model, offline-readable like one.

    The layout huggingface_hub writes: ``models--<owner>--<name>/blobs/<content hash>``, ``snapshots/<commit>/<path>``
    relative symlinks to those blobs, and ``refs/<branch>`` holding the commit. Returns the snapshot folder.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / hashlib.sha1(repo_id.encode()).hexdigest()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(snapshot.name)  # no newline, as huggingface_hub writes it
    return snapshot


# TINY_TRAIN for 4 steps with post-hoc EMA (a snapshot every 2 steps) and non-leaky augmentation (p = 0.5).
POSTHOC_TRAIN = (
    *TINY_TRAIN,
    "callbacks=posthoc_ema",
    "callbacks.posthoc_ema.every_n_steps=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid=null",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "dataset.augment=0.5",
)
