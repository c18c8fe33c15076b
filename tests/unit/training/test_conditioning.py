"""Class-conditional training: label dropout, unconditional runs unchanged to the bit, and a conditional model
that learns to draw the asked-for class with guidance."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.diffusion import GaussianDiffusion, generate, make_betas, make_sampler
from ddpm_lab.errors import ConfigError
from ddpm_lab.models import UNet
from ddpm_lab.training import DiffusionModule


def tiny_unet(**kwargs) -> UNet:
    return UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=(1,),
        num_res_blocks=1,
        attention_resolutions=(),
        groups=4,
        dropout=0.0,
        **kwargs,
    )


def module_for(net: UNet, p_uncond: float = 0.0, timesteps: int = 100) -> DiffusionModule:
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=timesteps, warn=False))
    optimizer = lambda p: torch.optim.AdamW(p, lr=1e-3)
    return DiffusionModule(net, diffusion, make_sampler("ddpm"), optimizer=optimizer, p_uncond=p_uncond)


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit_losses(num_classes: int, labelled: bool = True) -> list[float]:
    """train/loss of 4 steps from seed 0; ``labelled``: batches of (images, labels), else of images alone."""
    pl.seed_everything(0)
    images, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 2
    data = TensorDataset(images, labels) if labelled else TensorDataset(images)
    module = module_for(tiny_unet(num_classes=num_classes), p_uncond=0.5 if num_classes else 0.0)
    record = Losses()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    return record.losses


def test_unconditional_training_is_bit_for_bit_what_it_was():
    """Labels in the batch, conditioning off: the same seed gives exactly the losses of batches without labels, as
    training was before conditioning (no label read, no random number drawn for label dropout). Both runs in this
    process: losses recorded on another CPU differ in the last bits (oneDNN picks kernels per CPU)."""
    unconditional = fit_losses(num_classes=0)
    assert len(unconditional) == 4 and fit_losses(num_classes=0, labelled=False) == unconditional
    assert fit_losses(num_classes=2) != unconditional  # the comparison can fail


def test_label_dropout_replaces_a_p_uncond_fraction_and_unlabeled_images_by_the_null_class():
    torch.manual_seed(0)
    module = module_for(tiny_unet(num_classes=3), p_uncond=0.25)
    labels = torch.tensor([0, 1, 2, -1] * 2500)
    dropped = module.class_labels(labels, drop=True)
    assert (dropped[labels == -1] == 3).all()
    kept = labels >= 0
    assert abs(float((dropped[kept] == 3).float().mean()) - 0.25) < 0.02
    assert torch.equal(dropped[kept & (dropped != 3)], labels[kept & (dropped != 3)])
    assert torch.equal(module.class_labels(labels, drop=False), torch.where(labels < 0, 3, labels))  # validation
    assert torch.equal(module_for(tiny_unet(num_classes=3)).class_labels(labels[kept], drop=True), labels[kept])


@pytest.mark.parametrize("p_uncond", [-0.1, 1.0, 1.5])
def test_p_uncond_outside_zero_one_is_refused(p_uncond: float):
    with pytest.raises(ConfigError, match=r"conditioning.p_uncond must be in \[0, 1\)"):
        module_for(tiny_unet(num_classes=2), p_uncond=p_uncond)


def test_a_conditional_model_learns_to_draw_the_asked_for_class():
    """Dark vs bright 8px images, a tiny U-Net, 150 CPU steps with label dropout: guided samples (w = 3) are of the
    asked-for class at least 95% of the time."""
    torch.manual_seed(0)
    n = 256
    labels = torch.arange(n) % 2
    x0 = torch.where(labels.view(-1, 1, 1, 1) == 1, 0.6, -0.6) + 0.2 * torch.randn(n, 1, 8, 8)
    net = tiny_unet(num_classes=2)
    module = module_for(net, p_uncond=0.2)
    diffusion = GaussianDiffusion(make_betas("cosine", timesteps=100))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(150):
        idx = torch.randint(0, n, (16,))
        loss = diffusion.loss(module._denoiser(net, (x0[idx], labels[idx]), drop=True), x0[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    want = torch.arange(64) % 2
    sampler = make_sampler("ddim", steps=10)
    accuracy = {}
    for w in (0.0, 3.0):
        x = generate(net, diffusion, 64, labels=want, guidance=w, sampler=sampler, seed=1)
        accuracy[w] = float(((x.mean((1, 2, 3)) > 0).long() == want).float().mean())
    assert accuracy[3.0] >= 0.95, accuracy
    assert accuracy[0.0] < 0.8, accuracy  # unconditional: both classes, whatever was asked
