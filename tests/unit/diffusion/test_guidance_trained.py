"""Classifier-free guidance with a *trained* class-conditional network, for every sampler and prediction type.

The closed-form mixture tests check the formulas; this one checks what a user sees. A tiny MLP is trained here
(a few seconds) on 4×4 images whose class is the one bright 2×2 quadrant, a rule anyone can check on a sample.
Its guided samples must land in the class they were asked for at w = 1, 3, 5, and at w = 0 (the unconditional
model) only about as often as chance (1/4). With x̂_0 clipped, DDIM used to pair the clipped x̂_0 with the raw
(extrapolated) ε̂ and drove samples *away* from their class at w > 1 (below chance on MNIST).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_lab import GaussianDiffusion, make_betas, make_sampler
from ddpm_lab.diffusion import generate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

CLASSES, SIDE, HALF = 4, 4, 2
SCALES = (0.0, 1.0, 3.0, 5.0)
SAMPLERS = {
    "ddpm": {"steps": 100},
    "ddim": {"steps": 20},
    "dpm_solver": {"steps": 10},
    "diffusers DDIM": {"scheduler": "DDIMScheduler", "steps": 20},
    "diffusers Euler": {"scheduler": "EulerDiscreteScheduler", "steps": 20},
}


def quadrants(x: torch.Tensor) -> torch.Tensor:
    """(N, 4) mean brightness of each 2×2 quadrant, row by row."""
    return torch.stack(
        [x[:, 0, r * HALF : (r + 1) * HALF, c * HALF : (c + 1) * HALF].mean((1, 2)) for r in (0, 1) for c in (0, 1)],
        dim=1,
    )


def make_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images in [−1, 1]: class k has quadrant k white, the rest black, plus a little noise."""
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    x = -torch.ones(n, 1, SIDE, SIDE)
    for k in range(CLASSES):
        r, c = divmod(k, 2)
        x[labels == k, :, r * HALF : (r + 1) * HALF, c * HALF : (c + 1) * HALF] = 1.0
    return (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(-1, 1), labels


class TinyConditional(nn.Module):
    """``net(x_t, t, y)`` as ddpm_lab's U-Net takes it: ``num_classes`` classes and a null class (index
    ``num_classes``, also ``y=None``) for guidance; an MLP on the flattened image plus time and class embeddings."""

    in_channels, image_size, num_classes = 1, SIDE, CLASSES

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.classes = nn.Embedding(CLASSES + 1, width)
        self.time = nn.Linear(16, width)
        self.image = nn.Linear(SIDE * SIDE, width)
        self.body = nn.Sequential(
            nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, SIDE**2)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.full((x.shape[0],), CLASSES) if y is None else y
        phase = t.float()[:, None] / 10 * torch.exp(-torch.arange(8.0))[None]  # periods from 63 to 7·10⁴ steps
        h = self.image(x.flatten(1)) + self.time(torch.cat([phase.sin(), phase.cos()], 1)) + self.classes(y)
        return self.body(h).view_as(x)


def train(prediction: str, steps: int = 500) -> tuple[TinyConditional, GaussianDiffusion]:
    """Adam on the diffusion loss, labels dropped to the null class 20% of the time (Ho & Salimans' p_uncond)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    diffusion = GaussianDiffusion(make_betas("cosine", timesteps=1000, warn=False), prediction=prediction)
    net = TinyConditional()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        x, y = make_images(256, generator)
        y = torch.where(torch.rand(len(y), generator=generator) < 0.2, CLASSES, y)
        loss = diffusion.loss(lambda x_t, t, y=y: net(x_t, t, y), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval().requires_grad_(False), diffusion


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny MLP: one thread is fastest (and leaves the other core to the other tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread) -> dict[str, tuple[TinyConditional, GaussianDiffusion]]:
    return {prediction: train(prediction) for prediction in ("v", "eps", "x0")}


def class_accuracy(net, diffusion, sampler, w: float, n: int = 128) -> float:
    labels = torch.arange(n) % CLASSES
    images = generate(net, diffusion, n, sampler=sampler, labels=labels, guidance=w, batch_size=n, seed=1)
    return float((quadrants(images).argmax(1) == labels).double().mean())


def test_the_rule_classifies_the_training_images() -> None:
    images, labels = make_images(200, torch.Generator().manual_seed(5))
    assert bool((quadrants(images).argmax(1) == labels).all())


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])  # v on the cosine schedule: the case that failed
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_guided_samples_land_in_their_class(trained, prediction: str, name: str) -> None:
    if name.startswith("diffusers"):
        pytest.importorskip("diffusers")
    net, diffusion = trained[prediction]
    sampler = make_sampler(name.split()[0], **SAMPLERS[name])
    accuracy = {w: class_accuracy(net, diffusion, sampler, w) for w in SCALES}
    assert all(accuracy[w] >= 0.9 for w in SCALES if w >= 1), accuracy
    assert 0.08 <= accuracy[0.0] <= 0.5, accuracy  # unconditional: about chance (1/4), 128 samples
