import torch
from torch import nn

from ddpm_lab.models import UNet, count_parameters, forward_flops_per_image, train_flops_per_image


def test_flops_of_a_linear_layer_are_two_per_multiply_add() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 5, bias=False)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    net = Net()
    assert forward_flops_per_image(net, (3, 2, 2)) == 2 * 12 * 5
    assert train_flops_per_image(net, (3, 2, 2)) == 3 * 2 * 12 * 5
    assert count_parameters(net) == 60


def test_unet_flops_grow_with_the_image_and_leave_the_mode_alone() -> None:
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,))
    net.train()
    small = forward_flops_per_image(net, (1, 8, 8))
    large = forward_flops_per_image(net, (1, 16, 16))
    assert net.training
    assert 3.5 * small < large < 4.5 * small  # convolutions dominate: ~4x the pixels, ~4x the work
