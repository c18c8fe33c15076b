"""The U-Net's CPU dropout: nn.Dropout's semantics (rate, scale, gradient, eval, seeding) with a cheaper mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_lab.models.dropout import LEVELS, Dropout
from ddpm_lab.models.unet import UNet


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_drops_at_rate_p_and_keeps_the_mean(p: float):
    torch.manual_seed(0)
    x = torch.ones(64, 32, 28, 28)  # 1.6M elements: the rate's standard error is < 4e-4
    y = Dropout(p)(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 2e-3
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - round(p * LEVELS) / LEVELS)))
    assert abs(y.double().mean().item() - 1.0) < 5e-3


def test_every_lane_of_a_draw_is_uniform():
    """Four masks come from one 64-bit draw; each of the four positions must drop at rate p on its own."""
    torch.manual_seed(1)
    y = Dropout(0.5)(torch.ones(4 * 200_000))
    for lane in range(4):
        assert abs((y[lane::4] == 0).double().mean().item() - 0.5) < 5e-3


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(8, 16, 9, 9, requires_grad=True)  # an odd element count: the last draw is partly used
    y = Dropout(0.2)(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / (1 - round(0.2 * LEVELS) / LEVELS)))
    assert torch.allclose(y[kept], x[kept] * x.grad[kept])


def test_eval_p0_and_seeding():
    x = torch.randn(4, 8, 7, 7)
    drop = Dropout(0.1)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    drop.train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), a)  # seeded runs repeat exactly
    assert not torch.equal(drop(x), a)  # and every call draws a new mask


def test_inplace_and_dtype():
    torch.manual_seed(4)
    x = torch.ones(3, 1000)
    out = Dropout(0.25, inplace=True)(x)
    assert out is x and (x == 0).any()
    y = Dropout(0.25)(torch.ones(3, 1000, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_unet_state_and_modules_unchanged():
    """Checkpoints are unaffected: the layer is an nn.Dropout with no state."""
    net = UNet(
        in_channels=1, image_size=16, base_channels=8, channel_mults=(1, 2), attention_resolutions=(8,), groups=4
    )
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(isinstance(m, Dropout) and m.p == 0.1 for m in drops)
    assert not any("dropout" in k for k in net.state_dict())
