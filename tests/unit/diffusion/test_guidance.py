"""Classifier-free guidance as a denoiser wrapper: one batched pass, the w convention, extra channels, rescale,
and the errors ``generate`` gives for labels and guidance it cannot honour."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.diffusion import ClassifierFreeGuidance, GaussianDiffusion, generate, generate_batches, make_betas
from ddpm_lab.diffusion.guidance import evaluations_per_step, rescale_guidance
from ddpm_lab.errors import ConfigError


class Conditional(torch.nn.Module):
    """A toy ``net(x, t, y)``: its output depends on the label (null class 3); counts its calls and batch sizes."""

    in_channels, image_size, num_classes = 1, 4, 3

    def __init__(self, extra_channels: int = 0) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([0.5, -0.2, 0.3, 0.0]))
        self.extra_channels = extra_channels
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        y = torch.full((x.shape[0],), 3) if y is None else y
        out = 0.3 * x + self.shift[y].view(-1, 1, 1, 1) + 0.001 * t.float().view(-1, 1, 1, 1)
        extra = [10.0 + y.float().view(-1, 1, 1, 1).expand_as(x)] * self.extra_channels
        return torch.cat([out, *extra], dim=1)


def test_one_batched_pass_combines_conditional_and_unconditional_halves():
    net = Conditional()
    x, t, y = torch.randn(2, 1, 4, 4), torch.tensor([5, 7]), torch.tensor([0, 2])
    out = ClassifierFreeGuidance(net, y, guidance=3.0)(x, t)
    assert net.calls == [4]  # one forward pass of both halves
    cond, uncond = net(x, t, y), net(x, t)
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(ClassifierFreeGuidance(net, y, guidance=0.0)(x, t), uncond)
    torch.testing.assert_close(ClassifierFreeGuidance(net, y, guidance=1.0)(x, t), cond)


@pytest.mark.parametrize(
    ("guidance", "rescale", "batch", "count"), [(1.0, 0.0, 2, 1), (None, 0.0, 2, 1), (3.0, 0.0, 4, 2), (1.0, 0.5, 4, 2)]
)
def test_evaluations_per_step_count_what_the_network_is_asked(guidance, rescale, batch, count):
    """What ``evaluate`` reports as NFE: a guided step runs the network on both halves (twice the batch)."""
    net, y = Conditional(), torch.tensor([0, 2])
    if guidance is not None:
        ClassifierFreeGuidance(net, y, guidance=guidance, guidance_rescale=rescale)(
            torch.randn(2, 1, 4, 4), torch.tensor(5)
        )
        assert net.calls == [batch]
    assert evaluations_per_step(guidance, rescale) == count


def test_extra_output_channels_come_from_the_conditional_half():
    """A learned-variance net outputs [prediction, variance]: only the prediction is guided."""
    net = Conditional(extra_channels=1)
    x, t, y = torch.randn(2, 1, 4, 4), torch.tensor([5, 7]), torch.tensor([0, 2])
    out = ClassifierFreeGuidance(net, y, guidance=4.0)(x, t)
    cond, uncond = net(x, t, y), net(x, t)
    assert out.shape == (2, 2, 4, 4)
    torch.testing.assert_close(out[:, 1:], cond[:, 1:])
    torch.testing.assert_close(out[:, :1], uncond[:, :1] + 4.0 * (cond[:, :1] - uncond[:, :1]))


def test_guidance_rescale_matches_the_conditional_std():
    guided, cond = 3.0 * torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.0), guided)
    half = rescale_guidance(guided, cond, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)


def test_generate_slices_labels_per_batch_and_keeps_the_noise():
    net = Conditional()
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=20, warn=False))
    labels = torch.tensor([0, 1, 2, 0, 1])
    batches = list(generate_batches(net, diffusion, 5, labels=labels, guidance=2.0, batch_size=2))
    assert [b.labels.tolist() for b in batches] == [[0, 1], [2, 0], [1]]
    # The same seed at another guidance scale: same x_T and noise, so w = 1 equals the plain conditional chain.
    a = generate(net, diffusion, 5, labels=labels, guidance=1.0, batch_size=2)
    b = generate(net, diffusion, 5, labels=labels, guidance=2.0, batch_size=2)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, generate(net, diffusion, 5, labels=labels.tolist(), batch_size=2))
    zeros, ones = (generate(net, diffusion, 5, labels=[c] * 5, batch_size=2) for c in (0, 1))
    assert not torch.equal(zeros, ones)  # the labels reach the network


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"guidance": 3.0}, "guidance=3 needs class labels"),
        ({"labels": [0, 1, 3, 0, 1]}, "label 3 is outside this model's 3 classes"),
        ({"labels": [0, 1]}, "1-D tensor of 5 class indices"),
        ({"labels": [0.5] * 5}, "integer class indices"),
        ({"labels": [0] * 5, "guidance_rescale": 1.5}, "guidance_rescale must be in [0, 1]"),
    ],
)
def test_generate_refuses_labels_it_cannot_honour(kwargs, message):
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=20, warn=False))
    with pytest.raises(ConfigError) as err:
        generate(Conditional(), diffusion, 5, **kwargs)
    assert message in str(err.value)


def test_an_unconditional_net_takes_no_labels():
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=20, warn=False))
    net = lambda x, t: x
    with pytest.raises(ConfigError, match="this model is unconditional"):
        generate(net, diffusion, 2, labels=[0, 1], shape=(1, 2, 2))
    with pytest.raises(ConfigError, match="train it with conditioning=class"):
        generate(net, diffusion, 2, guidance=2.0, shape=(1, 2, 2))
