"""InMemoryLoader's position (data/loader.py): its state continues the batches of a loader never stopped, on every
rank, across epochs, and a resume with another global batch misses no image of the pass."""

from __future__ import annotations

import itertools

import pytest
import torch

from ddpm_lab.data import InMemoryLoader

N = 40  # images; they hold their own index, so a batch says which images it is


def loader(batch_size: int = 4, rank: int = 0, world_size: int = 1) -> InMemoryLoader:
    images = torch.arange(N).view(N, 1, 1, 1)
    return InMemoryLoader(images, images.view(N), batch_size, True, True, seed=5, rank=rank, world_size=world_size)


def served(source: InMemoryLoader, batches: int) -> list[list[int]]:
    """The next ``batches`` batches, epoch after epoch (a new ``iter`` per epoch, as Lightning does)."""
    out: list[list[int]] = []
    while len(out) < batches:
        out += [labels.tolist() for _, labels in itertools.islice(iter(source), batches - len(out))]
    return out


@pytest.mark.parametrize("stop", [0, 3, 10, 13, 27])  # before any batch, mid-epoch, at an epoch's end, later
def test_a_loader_restored_from_its_state_serves_what_the_loader_never_stopped_serves(stop: int) -> None:
    never_stopped = served(loader(), 30)
    first = loader()
    assert served(first, stop) == never_stopped[:stop]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert served(resumed, 30 - stop) == never_stopped[stop:]


def test_iter_without_a_batch_moves_nothing() -> None:
    """Lightning calls iter() to check that a loader is iterable, and for an epoch it may not start."""
    source = loader()
    iter(source), iter(source)
    assert source.state_dict() == {"epoch": 0, "images": 0, "images_per_batch": 4}
    assert served(source, 10) == served(loader(), 10)


def test_each_rank_continues_its_own_share() -> None:
    ranks = [loader(batch_size=2, rank=r, world_size=2) for r in (0, 1)]
    never_stopped = [served(loader(batch_size=2, rank=r, world_size=2), 16) for r in (0, 1)]
    states = []
    for rank, source in enumerate(ranks):
        assert served(source, 7) == never_stopped[rank][:7]
        states.append(source.state_dict())
    assert states[0] == states[1] == {"epoch": 0, "images": 28, "images_per_batch": 4}
    for rank in (0, 1):
        resumed = loader(batch_size=2, rank=rank, world_size=2)
        resumed.load_state_dict(states[rank])
        assert served(resumed, 9) == never_stopped[rank][7:]


@pytest.mark.parametrize("batch_size,world_size", [(6, 1), (3, 2), (2, 1)])
def test_another_global_batch_goes_on_from_the_first_batch_not_served_in_full(batch_size: int, world_size: int) -> None:
    first = loader(batch_size=4)
    seen = {i for batch in served(first, 5) for i in batch}  # 20 images of epoch 0
    resumed = [loader(batch_size, rank, world_size) for rank in range(world_size)]
    for source in resumed:
        source.load_state_dict(first.state_dict())
    rest = [i for source in resumed for _, labels in iter(source) for i in labels.tolist()]
    per_batch = batch_size * world_size
    usable = N // per_batch * per_batch  # drop_last: the epoch's last partial global batch is left out
    order = torch.randperm(N, generator=torch.Generator().manual_seed(5))[:usable].tolist()
    assert sorted(rest) == sorted(order[20 // per_batch * per_batch :])  # the rest of epoch 0, from a whole batch
    assert seen | set(rest) == set(order) | seen  # no image of the pass left out
    assert [s.state_dict()["epoch"] for s in resumed] == [0] * world_size
