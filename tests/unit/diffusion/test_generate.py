"""``generate``: the one batched sampling loop, and the one meaning of ``seed``."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    GaussianDiffusion,
    ImageNoise,
    SamplingStopped,
    generate,
    generate_batches,
    image_seed,
    make_betas,
)
from ddpm_lab.errors import ConfigError
from ddpm_lab.models import UNet


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


def test_image_i_comes_from_its_own_stream(setup):
    """x_T and every step's noise of image i come from one CPU stream seeded by image_seed(seed, i)."""
    net, diffusion, sampler = setup
    out = generate(net, diffusion, 5, sampler=sampler, seed=3, batch_size=2)
    for i in range(5):
        noise = ImageNoise(3, [i])
        x = noise.randn((1, 1, 4, 4))  # x_T: the stream's first draw ...
        assert torch.equal(
            x, torch.empty(1, 1, 4, 4).normal_(generator=torch.Generator().manual_seed(image_seed(3, i)))
        )
        alone = diffusion.sample(net, x_T=x, sampler=sampler, generator=noise)  # ... then each step's noise
        assert torch.equal(out[i : i + 1], alone), i


def test_same_seed_same_images_other_seed_other_images(setup):
    net, diffusion, sampler = setup
    a = generate(net, diffusion, 4, sampler=sampler, seed=0, batch_size=4)
    assert torch.equal(a, generate(net, diffusion, 4, sampler=sampler, seed=0, batch_size=4))
    assert not torch.allclose(a, generate(net, diffusion, 4, sampler=sampler, seed=1, batch_size=4))
    assert len({tuple(image.flatten().tolist()) for image in a}) == 4  # every image its own noise


def test_image_seeds_are_distinct_across_seeds_and_indices():
    seeds = {image_seed(s, i) for s in range(50) for i in range(200)}
    assert len(seeds) == 50 * 200 and all(0 <= v < 2**63 for v in seeds)


SAMPLERS = {
    "ddpm": DDPMSampler(steps=5),
    "ddpm_learned_free": DDPMSampler(steps=5, variance="fixed_large"),
    "ddim_eta": DDIMSampler(steps=5, eta=0.7),
    "dpm_solver": DPMSolverSampler(steps=5),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_images_do_not_depend_on_the_batch_size_or_on_n(setup, name):
    """Batch sizes 1, 7 and 64 give the same 9 images; the first 9 of 12 are those 9."""
    net, diffusion, _ = setup
    sampler = SAMPLERS[name]
    reference = generate(net, diffusion, 9, sampler=sampler, seed=5, batch_size=64)
    for batch_size in (1, 7):
        assert torch.equal(generate(net, diffusion, 9, sampler=sampler, seed=5, batch_size=batch_size), reference)
    assert torch.equal(generate(net, diffusion, 12, sampler=sampler, seed=5, batch_size=4)[:9], reference)


def test_indices_draw_those_images_of_the_sequence(setup):
    """One rank's share (every other image, or a slice) is exactly those images of the whole set."""
    net, diffusion, sampler = setup
    whole = generate(net, diffusion, 10, sampler=sampler, seed=2, batch_size=3)
    odd = generate(net, diffusion, 5, sampler=sampler, seed=2, batch_size=2, indices=range(1, 10, 2))
    assert torch.equal(odd, whole[1::2])
    with pytest.raises(ValueError, match="distinct image indices"):
        generate(net, diffusion, 2, sampler=sampler, indices=[1, 1])


def test_a_real_unet_gives_the_same_images_at_every_batch_size():
    """With the U-Net (convolutions, attention, class embedding), batch size changes no image beyond float
    rounding of the batched kernels (|Δ| ≤ 1e-5 on values in [-1, 1], 10 steps), and the noise not at all."""
    torch.manual_seed(0)
    net = UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=(1, 2),
        attention_resolutions=(4,),
        groups=4,
        num_heads=1,
        num_classes=3,
    ).eval()
    diffusion = GaussianDiffusion(make_betas("cosine", 50))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    kwargs = {"sampler": DDIMSampler(steps=10, eta=1.0), "seed": 7, "labels": labels, "guidance": 2.0}
    reference = generate(net, diffusion, 7, batch_size=7, **kwargs)
    for batch_size in (1, 3):
        torch.testing.assert_close(
            generate(net, diffusion, 7, batch_size=batch_size, **kwargs), reference, atol=1e-5, rtol=0
        )


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


def test_non_finite_samples_are_refused_never_returned_as_images():
    """A network whose outputs go NaN (finite weights, e.g. 0 x inf inside) would give black images, exit status 0."""
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=10, warn=False))
    broken = lambda x, t: torch.full_like(x, float("nan"))
    with pytest.raises(ConfigError, match=r"sampling with DDPMSampler.* gave non-finite values .* from image 0 on"):
        generate(broken, diffusion, 2, seed=0, shape=(1, 4, 4))
