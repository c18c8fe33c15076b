"""``deterministic=true``: the same command gives the same bits on a GPU too (on a CPU it always does).

Lightning's ``Trainer(deterministic=True)`` calls ``torch.use_deterministic_algorithms(True)`` (an op without a
deterministic kernel then raises instead of silently varying) and sets ``CUBLAS_WORKSPACE_CONFIG``; cuBLAS reads
that variable when it creates its first handle, so it is set here, before the run touches CUDA. cuDNN's autotuner
(``benchmark``) picks kernels by timing them, which can differ from run to run: it is switched off.
"""

from __future__ import annotations

import os
from typing import Any

import torch

# cuBLAS's deterministic workspace setting (PyTorch's "Reproducibility" notes): ':4096:8' or ':16:8'.
CUBLAS_WORKSPACE = ":4096:8"


def deterministic_trainer_options(deterministic: bool) -> dict[str, Any]:
    """Prepare the process for a deterministic run (or not) and return the ``Trainer`` arguments that go with it."""
    if not deterministic:
        return {}
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE  # as Lightning sets it, but before CUDA starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    return {"deterministic": True, "benchmark": False}
