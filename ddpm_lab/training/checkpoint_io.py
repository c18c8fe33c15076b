"""Checkpoints that are complete or absent: Lightning's checkpoint IO, writing through ``atomic_write`` and
reading through ``read_checkpoint`` (weights only, older formats upgraded, like every other reader)."""

from __future__ import annotations

import os
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins import TorchCheckpointIO

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``<dir>/.<name>.tmp-<pid>``, fsync, then ``os.replace`` onto ``<dir>/<name>``.

    A rename within one folder is atomic, so ``kill -9`` at any moment leaves either the previous complete
    file or the new complete file, never a truncated one. (Lightning's own save stages the file in the
    system temp folder and moves it, which is a plain copy when that is another file system.)
    Remote paths keep Lightning's fsspec saving and loading.

    ``ckpt_path=`` and ``resume=`` load local files with :func:`~ddpm_lab.artifacts.checkpoint.read_checkpoint`,
    as every other reader does: tensors and plain containers only, onto the CPU (Lightning copies the states to
    the model's device), upgraded to today's format.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_write(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
        except RuntimeError as e:
            # Ctrl-C in the middle of torch.save surfaces as its zip writer's "unexpected pos" error; keep it a
            # Ctrl-C, so Lightning and PreemptionGuard save last.ckpt and the run says how to resume.
            if isinstance(e.__context__, KeyboardInterrupt):
                raise e.__context__ from None
            raise

    def load_checkpoint(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, *args, **kwargs)
        return read_checkpoint(path)  # always weights only, onto the CPU: Lightning's map_location is not needed
