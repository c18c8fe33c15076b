"""Drawing n images from a denoiser in batches: the one loop that ``sample``, ``evaluate``, the FID callback,
sample grids and denoising strips all use. Plain PyTorch.

What ``seed`` means, everywhere in ddpm_lab: image ``i`` has its own CPU random stream, seeded by
``image_seed(seed, i)``; its x_T ~ N(0, I) and then every noise the sampler adds to it come from that stream
alone. So image ``i`` depends only on ``(seed, i)`` (and its class label): not on the batch size, the device, the
number of devices or processes, nor on how many images are asked for (the first n of n + k are the same n images).
Noise is drawn on the CPU and then moved, so the same seed gives the same images on every device (up to the
device's arithmetic). Class labels and classifier-free guidance (:mod:`ddpm_lab.diffusion.guidance`) draw no random
numbers: the same seed gives the same noise at every guidance scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm_lab.diffusion.core import Denoiser, ImageNoise, randn
from ddpm_lab.diffusion.edm import DiffusionProcess
from ddpm_lab.diffusion.guidance import check_labels, guided
from ddpm_lab.diffusion.samplers import Sampler
from ddpm_lab.errors import ConfigError, check_number


class SamplingStopped(Exception):
    """Raised by :func:`generate_batches` when its ``should_stop`` says so (e.g. SIGTERM arrived mid-sampling)."""


@dataclass
class Batch:
    """One batch of generated images: its position, x_0 on the sampling device, the kept x_t (first batch only),
    and its class labels (CPU, None when unconditional)."""

    start: int
    images: torch.Tensor
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None


def image_shape(net: Denoiser) -> tuple[int, int, int]:
    """(C, H, W) of the images a ddpm_lab network makes (``in_channels`` and ``image_size`` attributes)."""
    try:
        return (int(net.in_channels), int(net.image_size), int(net.image_size))  # type: ignore[attr-defined]
    except AttributeError as e:
        raise TypeError("pass shape=(C, H, W): this network has no in_channels/image_size attributes") from e


def _device_of(net: Denoiser) -> torch.device:
    if isinstance(net, nn.Module):
        for tensor in net.parameters():
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def generate_batches(
    net: Denoiser,
    diffusion: DiffusionProcess,
    n: int,
    sampler: Sampler | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    shape: Sequence[int] | None = None,
    keep: Iterable[int] = (),
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    guidance: float = 1.0,
    guidance_rescale: float = 0.0,
    indices: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Yield ``n`` samples as :class:`Batch` es of at most ``batch_size``, reproducibly from ``seed`` (see module doc).

    ``indices``: which images of ``seed``'s sequence to draw (``n`` of them; default ``0 … n−1``), e.g. one rank's
    share of a larger set: image ``indices[k]`` is the same whoever draws it.
    ``keep``: timesteps whose x_t (the state *before* denoising step t) the first batch hands back on the CPU,
    for strips and GIFs (only the first batch: later ones would only cost memory).
    ``device``: where sampling runs (the network's device by default). ``sampler``: the process's default (DDPM
    ancestral; EDM's Heun for :class:`~ddpm_lab.diffusion.EDMDiffusion`).
    ``should_stop``: polled after every reverse step; when it returns True, :class:`SamplingStopped` is raised
    (a training run uses it to stop a long sample grid at once when SIGTERM arrives).
    ``labels``: ``n`` class indices of a class-conditional network (None: its unconditional, null-class model),
    sliced per batch; ``guidance`` w: classifier-free guidance ε(∅) + w·(ε(c) − ε(∅)) (1: conditional, 0:
    unconditional, > 1 amplified), ``guidance_rescale`` φ (Lin et al., 2023); see ``ddpm_lab.diffusion.guidance``.
    """
    n = check_number(n, "n", int, low=1)
    batch_size = check_number(batch_size, "batch_size", int, low=1)
    indices = _image_indices(indices, n)
    labels = check_labels(net, labels, n, guidance)
    check_number(guidance_rescale, "guidance_rescale", float, 0, 1)
    sampler = diffusion.default_sampler() if sampler is None else sampler
    shape = tuple(shape) if shape is not None else image_shape(net)
    device = torch.device(device) if device is not None else _device_of(net)
    keep = {int(t) for t in keep}
    steps = len(sampler.visited(diffusion))
    bar = tqdm(total=math.ceil(n / batch_size) * steps, desc="sampling", unit="step", disable=not progress, leave=False)
    try:
        for start in range(0, n, batch_size):
            noise = ImageNoise(seed, indices[start : start + batch_size])
            x = randn((len(noise), *shape), noise, device)
            y = None if labels is None else labels[start : start + len(x)]
            model = guided(net, y, guidance, guidance_rescale)
            kept: dict[int, torch.Tensor] = {}
            for step in diffusion.sample_loop(model, sampler=sampler, generator=noise, x_T=x):
                if should_stop is not None and should_stop():
                    raise SamplingStopped(f"sampling stopped at image {indices[start]}, timestep {step.t}")
                if start == 0 and step.t in keep:
                    kept[step.t] = x.cpu()
                x = step.x
                bar.update()
            if not torch.isfinite(x).all():  # a broken network or sampler setting: never images written as if fine
                raise ConfigError(
                    f"sampling with {sampler!r} gave non-finite values (NaN or inf) from image {indices[start]} on: "
                    "the images are refused (nothing written); check the sampler settings (sampler.*) and checkpoint"
                )
            yield Batch(start, x, kept, y)
    finally:
        bar.close()


def _image_indices(indices: Sequence[int] | None, n: int) -> list[int]:
    """The image indices to draw: ``0 … n−1``, or ``indices`` (n distinct integers >= 0)."""
    if indices is None:
        return list(range(n))
    out = [int(i) for i in indices]
    if len(out) != n or len(set(out)) != n or min(out) < 0:
        raise ValueError(f"indices must be {n} distinct image indices >= 0 (one per image), got {len(out)}")
    return out


def generate(net: Denoiser, diffusion: DiffusionProcess, n: int, **kwargs) -> torch.Tensor:
    """``n`` samples in [−1, 1] as one (n, C, H, W) CPU tensor; keyword arguments as :func:`generate_batches`."""
    return torch.cat([batch.images.cpu() for batch in generate_batches(net, diffusion, n, **kwargs)])
