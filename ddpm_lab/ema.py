"""Post-hoc EMA entry point: ``python -m ddpm_lab.ema ckpt=<run>/checkpoints/last.ckpt sigma_rel=0.05,0.10,0.15``.

Reconstructs, from the snapshots of a run trained with ``callbacks=posthoc_ema``, the EMA of each asked-for length
at the checkpoint's step (EDM2's least squares, :mod:`ddpm_lab.artifacts.posthoc_ema`) and writes one checkpoint per
σ_rel; ``ema(cfg)`` does the work, ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ddpm_lab.artifacts.posthoc_ema import write_posthoc_checkpoints
from ddpm_lab.config import config_dir
from ddpm_lab.config.entry import comma_list, entry_point
from ddpm_lab.config.settings import ema_settings
from ddpm_lab.errors import user_errors

log = logging.getLogger(__name__)


def ema(cfg: DictConfig) -> list[Path]:
    """Check ``cfg`` and write the post-hoc EMA checkpoints it asks for; returns their paths."""
    s = ema_settings(cfg)
    return write_posthoc_checkpoints(s.ckpt, s.sigma_rels, s.snapshots, s.out)


@entry_point("ema")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="ema", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with user_errors():  # one line on stderr, exit status 2
        paths = ema(cfg)
    for path in paths:
        print(path)
    sweep = shlex.quote("ckpt=" + ",".join(str(p) for p in paths))
    print(f"FID against EMA length: python -m ddpm_lab.evaluate -m {sweep}")


def main() -> None:
    """``python -m ddpm_lab.ema ...`` (the Hydra entry point, with ``sigma_rel=0.05,0.10`` read as a list)."""
    sys.argv[1:] = comma_list(sys.argv[1:], "sigma_rel")
    _main()


if __name__ == "__main__":
    main()
