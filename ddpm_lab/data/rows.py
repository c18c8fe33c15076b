"""Rows of an image tensor picked by an index and read only when asked for: a dataset's train and validation splits
without a copy of the dataset (a memory-mapped decoded cache stays shared by every process that maps it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_map


class Rows:
    """``images[index]``, gathered batch by batch: ``rows[i]`` is ``images[index[i]]`` for an int, a slice, an index
    tensor or a mask, and ``len``, ``shape``, ``dtype``, ``device`` are those of the selection.

    Torch functions given a ``Rows``, and tensor methods it does not define, see the rows themselves
    (``torch.equal(dm.train_images, x)``, ``dm.train_images.float()``): that gathers a copy, which is what indexing a
    memory-mapped dataset batch by batch avoids, so the training loop only indexes it.
    """

    def __init__(self, images: torch.Tensor, index: torch.Tensor) -> None:
        self.images, self.index = images, index.to(images.device)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.images.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.images.dtype

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, tuple):  # rows[:, 0]: pick the rows, then index within them
            first, rest = idx[0], idx[1:]
            picked = self[first]
            return picked[rest] if isinstance(first, int) else picked[(slice(None), *rest)]
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.index.device)
        return self.images[self.index[idx]]

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def to(self, device: torch.device | str) -> Rows:
        return Rows(self.images.to(device), self.index.to(device))

    def cpu(self) -> Rows:
        return self.to("cpu")

    def numel(self) -> int:
        return self.shape.numel()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("images", "index"):  # copy/pickle protocols, or not built yet
            raise AttributeError(name)
        return getattr(self[:], name)

    def __repr__(self) -> str:
        return f"Rows({tuple(self.shape)}, {self.dtype}, of {tuple(self.images.shape)} on {self.device})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # torch's protocol: torch.f(rows) gets rows[:]
        def gather(value: Any) -> Any:
            return value[:] if isinstance(value, Rows) else value

        return func(*tree_map(gather, args), **tree_map(gather, kwargs or {}))
