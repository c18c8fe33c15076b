"""The processes of a multi-device run as the code that shares out images sees them. Plain PyTorch.

``n`` images are drawn (and their features extracted) in batches of ``batch_size``. :meth:`Ranks.share` gives each
rank whole batches of the one-device run, a contiguous block of them (rank 0 first), so every batch, and so every
image and its features, is computed exactly as on one device; :meth:`Ranks.gather` puts the ranks' parts back
together in image order; :meth:`Ranks.together` turns a failure on one rank into a failure on every rank, so no rank
waits forever in a collective. The collectives are ``torch.distributed``'s, on the default process group that
Lightning (Fabric, or a Trainer's DDP strategy) set up; one process needs none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ddpm_lab import errors
from ddpm_lab.errors import EXIT_USER_ERROR, ReportedElsewhere, UserError, one_line

T = TypeVar("T")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def batch_share(n: int, batch_size: int, rank: int, world: int) -> range:
    """The images of ``0 … n−1`` that ``rank`` of ``world`` draws: batches ``⌈r·B/W⌉ … ⌈(r+1)·B/W⌉−1`` of the
    ``B = ⌈n / batch_size⌉`` batches of one device. Rank 0 always has batch 0; a rank may have none."""
    batches = _ceil_div(n, batch_size)
    first, last = _ceil_div(rank * batches, world), _ceil_div((rank + 1) * batches, world)
    return range(min(first * batch_size, n), min(last * batch_size, n))


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` of ``world`` (joined by ``torch.distributed``'s default process group when more
    than one) and the ``device`` it computes on (the one its collectives use: a GPU's under NCCL).

    ``quiet_status``: the exit status of a rank whose failure rank 0 reports (0 for the processes a launcher
    started on this machine, whose status nobody reads; 2 for those a cluster started).
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quiet_status: int = EXIT_USER_ERROR

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not one of {self.world} ranks")
        if self.world > 1 and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("several ranks need torch.distributed's default process group (Lightning starts it)")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The same-shaped ``tensor`` of every rank, stacked: (world, ...), on this rank's device."""
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def broadcast(self, obj: T, src: int) -> T:
        """Rank ``src``'s (picklable) ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src, device=self.device)
        return box[0]

    @property
    def is_zero(self) -> bool:
        """Rank 0: the one that scores, writes files and reports errors."""
        return self.rank == 0

    def share(self, n: int, batch_size: int) -> range:
        """This rank's images of ``0 … n−1``: whole batches of one device (:func:`batch_share`)."""
        return batch_share(n, batch_size, self.rank, self.world)

    def gather(
        self, part: torch.Tensor | None, n: int, batch_size: int, first: int | None = None
    ) -> torch.Tensor | None:
        """Items ``0 … n−1`` (only the first ``first`` of them, when given) on the CPU in image order, on every rank,
        from each rank's ``part``: the items of its :meth:`share`, or None when it has none. None when rank 0's part
        is None (nothing was made: e.g. no logits). Call it on every rank."""
        mine = self.share(n, batch_size)
        if part is not None and len(part) != len(mine):
            raise ValueError(f"rank {self.rank} holds {len(part)} items, its share is {len(mine)}")
        keep = n if first is None else min(first, n)
        if self.world == 1:
            return None if part is None else part[:keep].cpu()
        spec = self.broadcast(None if part is None else (tuple(part.shape[1:]), part.dtype), 0)
        if spec is None:
            return None
        shape, dtype = spec
        shares = [batch_share(n, batch_size, r, self.world) for r in range(self.world)]
        sizes = [max(0, min(s.stop, keep) - s.start) for s in shares]
        # all_gather needs the same shape from every rank: pad each part to the largest
        padded = torch.zeros((max(sizes), *shape), dtype=dtype, device=self.device)
        if sizes[self.rank]:
            padded[: sizes[self.rank]] = part[: sizes[self.rank]].to(self.device)
        stacked = self.all_gather(padded).cpu()
        return torch.cat([stacked[r, :size] for r, size in enumerate(sizes)])

    def from_rank_zero(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (e.g. the scores only rank 0 computed)."""
        return obj if self.world == 1 else self.broadcast(obj, 0)

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run a block on every rank; when it raised on any of them, it raises on every one, once all got here.

        Rank 0 raises the error of the lowest failing rank (a :class:`~ddpm_lab.errors.UserError` keeps its kind
        and message, naming the rank); the others raise :class:`~ddpm_lab.errors.ReportedElsewhere` and exit
        silently, except a rank whose own error is not a UserError: it raises that, with its traceback.
        """
        error: Exception | None = None
        try:
            yield
        except Exception as e:
            if self.world == 1:
                raise
            error = e
        if self.world == 1:
            return
        flag = torch.tensor([int(error is not None)], device=self.device)
        failed = self.all_gather(flag).view(-1).tolist()
        if not any(failed):
            return
        src = failed.index(1)
        what = self.broadcast(_describe(error) if self.rank == src else None, src)
        if error is not None and (not isinstance(error, UserError) or (self.is_zero and src == 0)):
            raise error
        if not self.is_zero:
            raise ReportedElsewhere(self.quiet_status)
        raise _rebuild(what, src)

    def rank_zero_first(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0, then on the other ranks, which find what rank 0 downloaded, decoded or trained in
        its cache (as Lightning's ``prepare_data``); a failure on any rank raises on all (:meth:`together`)."""
        result: Any = None
        with self.together():
            if self.is_zero:
                result = work()
        with self.together():
            if not self.is_zero:
                result = work()
        return result


def _describe(error: Exception | None) -> tuple[bool, str, str]:
    """What a failing rank tells the others: whether it is a user error, its kind and its message."""
    assert error is not None
    return isinstance(error, UserError), type(error).__name__, one_line(error)


def _rebuild(what: tuple[bool, str, str], src: int) -> Exception:
    """Rank ``src``'s error as rank 0 raises it: a user error of the same kind (from ``ddpm_lab.errors``)."""
    user, kind, message = what
    if not user:
        return RuntimeError(f"rank {src} failed with {kind}: {message} (its traceback is above)")
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, UserError)) or cls is ReportedElsewhere:
        cls = UserError
    return cls(f"on rank {src}: {message}")


ONE_PROCESS = Ranks()  # a run of one process: shares are everything, gathers and together() are no-ops
