"""Shared fixtures: composed configs, tiny on-disk datasets and a finished tiny run; the helpers they use (and the
tests import) live in ``helpers.py``. Layout: ``unit/<package>/`` mirrors ``ddpm_lab/<package>/``; ``cli/`` runs the
entry points in subprocesses; ``test_architecture.py`` keeps the layers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ddpm_lab.artifacts import download
from ddpm_lab.config import config_dir
from ddpm_lab.train import train
from helpers import POSTHOC_TRAIN, THREADS, TINY_TRAIN, Composer, compose_config, run_cli, write_image_folder

# Nothing the tests run may write into the user's real cache folder: our caches (paths.cache_dir: null) and the
# Hugging Face cache ($XDG_CACHE_HOME/huggingface) go under a throwaway XDG_CACHE_HOME, which the command-line
# subprocesses inherit. torch's hub cache (extractor weights already downloaded there) stays where it was.
_REAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
os.environ.setdefault("TORCH_HOME", str(_REAL_CACHE / "torch"))
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ddpm_lab-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
# No test touches the network: the Hugging Face Hub is offline (read when huggingface_hub is first imported, which
# nothing above does) and a weights download may read a file:// URL only (no_network below).
os.environ["HF_HUB_OFFLINE"] = "1"
for _hf_cache in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the throwaway folder, not the user's
    os.environ.pop(_hf_cache, None)

torch.set_num_threads(min(THREADS, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weights download in a test may read a local file (file://) only: a forgotten URL fails, never fetches."""
    real = download.urlopen

    def local_only(url, *args, **kwargs):
        if not str(url).startswith("file://"):
            raise AssertionError(f"a test tried to download {url}: pass a file:// URL")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(download, "urlopen", local_only)


@pytest.fixture
def hydra_initialised():
    """Hydra initialised on ``configs/`` for the test (as inside ``@hydra.main``), cleared afterwards."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def cfg_train() -> Composer:
    """``cfg_train(*overrides, hydra=False)``: a composed training config."""
    return lambda *overrides, hydra=False: compose_config("train", overrides, hydra)


@pytest.fixture(scope="session")
def cfg_sample() -> Composer:
    """``cfg_sample(*overrides)``: a composed ``sample`` config."""
    return lambda *overrides, hydra=False: compose_config("sample", overrides, hydra)


@pytest.fixture(scope="session")
def cfg_eval() -> Composer:
    """``cfg_eval(*overrides)``: a composed ``evaluate`` config."""
    return lambda *overrides, hydra=False: compose_config("evaluate", overrides, hydra)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """One finished TINY_TRAIN run (every TensorBoard interval fires within its 6 steps), shared by the tests."""
    cwd = tmp_path_factory.mktemp("tiny_run")
    run_cli("ddpm_lab.train", *TINY_TRAIN, f"dataset.root={image_folder}", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


@pytest.fixture(scope="session")
def posthoc_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """One POSTHOC_TRAIN run (post-hoc EMA snapshots at steps 2 and 4, augmentation on), trained in this process."""
    run = tmp_path_factory.mktemp("posthoc_run") / "run"
    train(compose_config("train", [*POSTHOC_TRAIN, f"dataset.root={image_folder}", f"paths.output_dir={run}"]))
    return run
