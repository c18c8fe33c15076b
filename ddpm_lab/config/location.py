"""Where the ``configs/`` folder is: next to the package in a checkout, inside it in an installed wheel."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The ``configs/`` folder that holds ``train.yaml`` and the config groups."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parent / "configs", here / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"ddpm_lab configs not found next to {here}: reinstall the package")
