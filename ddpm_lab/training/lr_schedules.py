"""Learning-rate schedules: a linear warm-up, then constant, cosine or linear decay to a floor.

Each is a factor of ``optimizer.lr`` per optimizer step (``step -> float``), run by ``torch.optim.lr_scheduler.
LambdaLR``. The ``lr_schedule`` config options build them as partials; the module passes ``warmup_steps``.
"""

from __future__ import annotations

import math

from ddpm_lab.errors import ConfigError, check_number


def auto_warmup(max_steps: int, fraction: float = 0.05, cap: int = 1000) -> int:
    """The default warm-up: ``min(cap, fraction * max_steps)`` steps, so a short run still reaches its lr;
    ``cap`` for a run without a step limit (``trainer.max_steps=-1``)."""
    max_steps = check_number(max_steps, "trainer.max_steps", int, low=-1)
    return cap if max_steps < 0 else min(cap, round(fraction * max_steps))


class ConstantLR:
    """Linear warm-up from ~0 over ``warmup_steps`` optimizer steps, then ``optimizer.lr`` (Goyal et al., 2017)."""

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = check_number(warmup_steps, "warmup_steps", int, low=0)

    def __call__(self, step: int) -> float:
        warmup = self.warmup_steps
        if warmup > 0 and step < warmup:
            return min(1.0, (step + 1) / warmup)
        return self.after_warmup(step)

    def after_warmup(self, step: int) -> float:
        return 1.0


class DecayLR(ConstantLR):
    """Warm-up, then a decay from ``optimizer.lr`` to ``floor * optimizer.lr`` at ``total_steps``, held after it."""

    def __init__(self, warmup_steps: int = 0, total_steps: int = 100_000, floor: float = 0.0) -> None:
        super().__init__(warmup_steps)
        name = type(self).__name__
        total = check_number(total_steps, "lr_schedule.total_steps", int, optional=True)
        if total is None or total < 1:
            raise ConfigError(
                f"lr_schedule.total_steps={total_steps!r}: {name} decays over a known number of steps; "
                "set trainer.max_steps (or lr_schedule.total_steps) to a positive number, or use lr_schedule=constant"
            )
        self.total_steps = total
        self.floor = check_number(floor, "lr_schedule.floor", float, low=0, high=1)

    def progress(self, step: int) -> float:
        """0 at the end of the warm-up, 1 at ``total_steps`` (and after)."""
        span = max(1, self.total_steps - self.warmup_steps)
        return min(1.0, max(0.0, (step - self.warmup_steps) / span))


class CosineLR(DecayLR):
    """Warm-up, then half a cosine down to ``floor`` (Loshchilov & Hutter, 2017; Nichol & Dhariwal, 2021)."""

    def after_warmup(self, step: int) -> float:
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))


class LinearLR(DecayLR):
    """Warm-up, then a straight line down to ``floor``."""

    def after_warmup(self, step: int) -> float:
        return 1.0 - (1 - self.floor) * self.progress(step)
