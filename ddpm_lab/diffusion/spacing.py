"""Which timesteps a chain visits, and which of them a picture shows. Plain Python.

``space_timesteps`` respaces a T-step schedule for a shorter chain (diffusers' ``timestep_spacing``);
``evenly_spaced`` and ``fit_timesteps`` pick the columns of strips and the frames of GIFs from a chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddpm_lab.errors import ConfigError, check_choice, check_number

SPACINGS = ("linspace", "leading", "trailing", "quadratic")


def space_timesteps(num_timesteps: int, steps: int | None, spacing: str = "linspace") -> list[int]:
    """``steps`` timesteps in [0, T−1], ascending, like diffusers' ``timestep_spacing`` (Lin et al., 2023, Table 2).

    ``linspace``: round(linspace(0, T−1, steps)), both ends included; ``leading``: k·⌊T/steps⌋ for k = 0…steps−1,
    starting at 0; ``trailing``: round(k·T/steps) − 1 for k = 1…steps, ending at T−1. ``None`` = all T.
    ``quadratic``: ⌊(k·√(0.8T)/(steps−1))²⌋ for k = 0…steps−1 (Song et al., 2021, DDIM's CIFAR-10 setting and its
    code), dense near t = 0 and stopping at 0.8T; a timestep repeated by the floor (many steps, small T) is kept
    once, so the chain may be shorter than ``steps`` (DDIM's step between equal timesteps changes nothing).
    """
    check_choice(spacing, "sampler.spacing", SPACINGS)
    steps = num_timesteps if steps is None else check_number(steps, "sampler.steps", int, 1, num_timesteps)
    if spacing == "linspace":
        ts = np.linspace(0, num_timesteps - 1, steps).round()
    elif spacing == "quadratic":
        ts = np.unique((np.linspace(0, np.sqrt(0.8 * num_timesteps), steps) ** 2).astype(int))
    elif spacing == "leading":
        ts = np.arange(steps) * (num_timesteps // steps)
    else:
        ts = np.round(np.arange(1, steps + 1) * num_timesteps / steps) - 1
    return [int(t) for t in ts]


def evenly_spaced(values: Sequence[int], k: int) -> list[int]:
    """``k`` entries of ``values`` spread evenly from first to last (all of them when k ≥ len)."""
    if k >= len(values):
        return list(values)
    if k == 1:
        return [values[0]]
    return [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)]


def fit_timesteps(requested: Sequence[int], num_timesteps: int, visited: Sequence[int] | None = None) -> list[int]:
    """Adapt timesteps chosen for one T to a run: rescale when any exceeds T−1, snap to ``visited``, dedupe.

    ``[999, 800, …, 0]`` (written for T = 1000) becomes ``[49, 40, …, 0]`` for T = 50; with a respaced
    sampler each one moves to the nearest timestep the sampler really visits. Order is kept.
    """
    if not requested:
        raise ConfigError("the list of timesteps is empty: give at least one t, e.g. [999,500,0]")
    if min(requested) < 0:
        raise ConfigError(f"timesteps must be >= 0, got {list(requested)}")
    top = max(requested)
    scale = (num_timesteps - 1) / top if top > num_timesteps - 1 else 1.0
    out: list[int] = []
    for t in requested:
        t = round(t * scale)
        if visited:
            t = min(visited, key=lambda v: (abs(v - t), v))
        if t not in out:
            out.append(t)
    return out
