"""``generate``: the one batched sampling loop, and the one meaning of ``seed``."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.diffusion import (
    DDPMSampler,
    GaussianDiffusion,
    SamplingStopped,
    generate,
    generate_batches,
    make_betas,
    randn,
)
from ddpm_lab.errors import ConfigError


class Toy(torch.nn.Module):
    """A tiny denoiser with the attributes ddpm_lab networks carry."""

    in_channels, image_size = 1, 4

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * x + 0.01 * t.float().view(-1, 1, 1, 1)


@pytest.fixture
def setup() -> tuple[Toy, GaussianDiffusion, DDPMSampler]:
    return Toy(), GaussianDiffusion(make_betas("cosine", 20)), DDPMSampler(steps=5)


def test_seed_means_one_generator_batch_after_batch(setup):
    """x_T then every step's noise of batch 1, then batch 2, ... all from one CPU generator seeded with ``seed``."""
    net, diffusion, sampler = setup
    out = generate(net, diffusion, 5, sampler=sampler, seed=3, batch_size=2)
    g = torch.Generator().manual_seed(3)
    manual = []
    for b in (2, 2, 1):
        x = randn((b, 1, 4, 4), g, "cpu")
        manual.append(diffusion.sample(net, x_T=x, sampler=sampler, generator=g))
    assert torch.equal(out, torch.cat(manual))


def test_same_seed_same_images_other_seed_other_images(setup):
    net, diffusion, sampler = setup
    a = generate(net, diffusion, 4, sampler=sampler, seed=0, batch_size=4)
    assert torch.equal(a, generate(net, diffusion, 4, sampler=sampler, seed=0, batch_size=4))
    assert not torch.allclose(a, generate(net, diffusion, 4, sampler=sampler, seed=1, batch_size=4))


def test_a_larger_n_starts_with_the_full_batches_of_a_smaller_one(setup):
    net, diffusion, sampler = setup
    small = generate(net, diffusion, 4, sampler=sampler, seed=0, batch_size=2)
    large = generate(net, diffusion, 7, sampler=sampler, seed=0, batch_size=2)
    assert large.shape == (7, 1, 4, 4) and torch.equal(large[:4], small)


def test_kept_frames_come_from_the_first_batch_only(setup):
    net, diffusion, sampler = setup
    visited = sampler.timesteps(diffusion.num_timesteps)
    batches = list(generate_batches(net, diffusion, 5, sampler=sampler, seed=0, batch_size=2, keep=visited[:2]))
    assert [b.start for b in batches] == [0, 2, 4]
    assert sorted(batches[0].kept) == sorted(visited[:2]) and all(not b.kept for b in batches[1:])
    assert batches[0].kept[visited[0]].shape == (2, 1, 4, 4)  # x_T itself: the state before the first step


@pytest.mark.parametrize(
    "kwargs, message", [({"n": 0}, "n must be >= 1"), ({"batch_size": 0}, "batch_size must be >= 1")]
)
def test_bad_counts_name_their_setting(setup, kwargs, message):
    net, diffusion, sampler = setup
    with pytest.raises(ConfigError, match=message):
        generate(net, diffusion, **{"n": 2, **kwargs})


def test_generate_stops_between_reverse_steps_when_asked():
    diffusion = GaussianDiffusion(make_betas("cosine", 20))
    net = lambda x, t: torch.zeros_like(x)
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(SamplingStopped):
        list(generate_batches(net, diffusion, 4, sampler=DDPMSampler(), shape=(1, 4, 4), should_stop=should_stop))
    assert len(calls) == 3  # polled once per reverse step, stopped at the third of 20
    full = list(generate_batches(net, diffusion, 4, sampler=DDPMSampler(), shape=(1, 4, 4), should_stop=lambda: False))
    assert full[0].images.shape == (4, 1, 4, 4)
