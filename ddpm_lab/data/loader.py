"""A data loader for datasets that fit in memory as one uint8 tensor: batches are slices, not collated items."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class InMemoryLoader:
    """Iterate over ``(images[idx], labels[idx])`` batches of an in-memory uint8 dataset.

    Shuffles with a generator seeded by ``seed + epoch`` (the same order on every rank) and gives rank ``r`` of
    ``world_size`` every ``world_size``-th batch-sized slice of it, so ranks never overlap. Far faster than a
    ``DataLoader`` over items for MNIST/CIFAR-sized data.

    Each ``iter()`` serves the next pass (epoch). The loader is stateful: :meth:`state_dict` is the pass being
    served and how many of its images have been served (by all ranks together), which Lightning stores in every
    checkpoint; after :meth:`load_state_dict` the next ``iter()`` goes on from that position, so a resumed run sees
    the batches the run never stopped would have seen.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0  # the pass the next iter() serves
        self._start = 0  # the batch (of this rank) it starts at: > 0 only after load_state_dict
        self._served = (0, 0)  # (pass, batches of it served so far): what a checkpoint stores

    @property
    def images_per_batch(self) -> int:
        """Images of one batch over all ranks: the global batch."""
        return self.batch_size * self.world_size

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        usable = (n // self.images_per_batch) * self.images_per_batch if self.drop_last else n
        order = order[:usable]
        # Rank r takes positions r, r + W, r + 2W, ...: global batch k is the union over ranks.
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.images)
        if self.drop_last:
            return n // self.images_per_batch
        return -(-len(range(self.rank, n, self.world_size)) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: nothing happens before the first batch is asked for (Lightning calls iter() to check that
        # the loader is iterable, and again for a new epoch, without always taking a batch).
        epoch, start = self.epoch, self._start
        self.epoch, self._start = epoch + 1, 0  # a new order every pass
        self._served = (epoch, start)
        idx = self._indices(epoch).to(self.images.device)  # slice where the data lives (CPU, or GPU with on_device)
        for k in range(start, len(self)):
            batch = idx[k * self.batch_size : (k + 1) * self.batch_size]
            self._served = (epoch, k + 1)
            yield self.images[batch], self.labels[batch]

    def state_dict(self) -> dict[str, Any]:
        """The pass being served and the images of it served so far (all ranks), and the global batch."""
        epoch, batches = self._served
        return {"epoch": epoch, "images": batches * self.images_per_batch, "images_per_batch": self.images_per_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on where ``state`` was: the next ``iter()`` serves the rest of its pass (the next pass when it was
        finished). With another global batch (batch size or world size) it starts at the first batch not yet
        served in full, so a few images of the pass may be seen twice."""
        epoch, served = int(state["epoch"]), int(state["images"])
        start = served // self.images_per_batch
        if start >= len(self):
            epoch, start = epoch + 1, 0
        self.epoch, self._start = epoch, start
        self._served = (epoch, start)
