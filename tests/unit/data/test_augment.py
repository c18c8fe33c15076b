"""Non-leaky augmentation (data/augment.py, ``dataset.augment=p``): the labels say exactly what was done to each image,
p = 0 changes nothing (no random numbers, the same two-element batches, the same network and stored config), the
network and the training step take the labels, and bad settings are refused in one line."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm_lab.artifacts.images import to_model_range
from ddpm_lab.config import stored_config
from ddpm_lab.config.build import model_node
from ddpm_lab.data import ImageFolderDataModule
from ddpm_lab.data.augment import augment_dim, augment_images, max_shift
from ddpm_lab.diffusion import DDPMSampler, GaussianDiffusion, make_betas
from ddpm_lab.errors import ConfigError
from ddpm_lab.models import UNet
from ddpm_lab.training import DiffusionModule
from helpers import TINY_TRAIN, compose_config


def undo_labels(image: np.ndarray, label: np.ndarray, size: int) -> np.ndarray:
    """Apply to ``image`` (C, H, W) what ``label`` describes, independently of the code under test (numpy)."""
    out = image[:, :, ::-1] if label[0] == 1 else image
    if len(label) == 5:
        k = round(math.atan2(label[4], label[3] + 1) / (math.pi / 2)) % 4
        out = np.rot90(out, k, axes=(1, 2))
    s = max_shift(size)
    dx, dy = round(label[1] * s), round(label[2] * s)
    padded = np.pad(out, ((0, 0), (s, s), (s, s)), mode="reflect")
    return padded[:, s - dy : s - dy + size, s - dx : s - dx + size]


@pytest.mark.parametrize("rotate", [False, True])
def test_the_labels_describe_exactly_what_was_applied(rotate):
    torch.manual_seed(0)
    images = torch.rand(256, 2, 16, 16) * 2 - 1
    out, labels = augment_images(images, 0.5, rotate)
    assert labels.shape == (256, augment_dim(rotate)) and out.shape == images.shape
    for image, got, label in zip(images.numpy(), out.numpy(), labels.numpy()):
        np.testing.assert_array_equal(got, undo_labels(image, label, 16))
    untouched = (labels == 0).all(1)
    assert torch.equal(out[untouched], images[untouched])
    # each transform on about half the images; shifts within ±16/8 pixels, turns by 1-3 quarters
    assert 0.35 < labels[:, 0].mean() < 0.65 and set(labels[:, 1].mul(2).tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    if rotate:
        turned = labels[:, 3:].abs().sum(1) > 0
        assert 0.35 < turned.float().mean() < 0.65
    full, _ = augment_images(images, 1.0, rotate)
    assert not any(torch.equal(a, b) for a, b in zip(full, images))  # p = 1: every image is flipped at least


def test_p_zero_draws_no_random_numbers_and_keeps_the_batch_as_it_was(image_folder):
    data = ImageFolderDataModule(root=str(image_folder), image_size=16, channels=3, flip=True)
    assert data.augment == 0 and data.augment_dim == 0
    data.trainer = SimpleNamespace(training=True)
    batch = (torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    torch.manual_seed(0)
    out = data.on_after_batch_transfer(batch, 0)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    mask = torch.rand(8) < 0.5  # today's flip, and nothing else
    expected = torch.where(mask[:, None, None, None], to_model_range(batch[0]).flip(-1), to_model_range(batch[0]))
    assert len(out) == 2 and torch.equal(out[0], expected) and torch.equal(after, torch.get_rng_state())
    images, labels = augment_images(expected, 0.0)
    assert images is expected and not labels.any()


def test_augmented_training_batches_carry_labels_and_validation_batches_do_not(image_folder):
    data = ImageFolderDataModule(root=str(image_folder), image_size=16, channels=3, augment=0.5, augment_rotate=True)
    batch = (torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    data.trainer = SimpleNamespace(training=True)
    images, labels, augment_labels = data.on_after_batch_transfer(batch, 0)
    assert augment_labels.shape == (8, 5) and data.augment_dim == 5
    data.trainer = SimpleNamespace(training=False)
    assert len(data.on_after_batch_transfer(batch, 0)) == 2


def test_the_network_and_the_checkpoint_layout_gain_the_embedding_only_with_augmentation(image_folder):
    plain = compose_config("train", [*TINY_TRAIN, f"dataset.root={image_folder}"])
    assert model_node(plain) is plain.model and "augment_dim" not in stored_config(plain)["model"]
    augmented = compose_config("train", [*TINY_TRAIN, f"dataset.root={image_folder}", "dataset.augment=0.3"])
    assert model_node(augmented).augment_dim == 3 and stored_config(augmented)["model"]["augment_dim"] == 3
    rotated = compose_config(
        "train", [*TINY_TRAIN, f"dataset.root={image_folder}", "dataset.augment=0.3", "dataset.augment_rotate=true"]
    )
    assert model_node(rotated).augment_dim == 5
    kwargs = {"in_channels": 1, "image_size": 8, "base_channels": 8, "channel_mults": (1, 2), "groups": 4}
    kwargs["attention_resolutions"] = (4,)
    torch.manual_seed(0)
    today = UNet(**kwargs)
    torch.manual_seed(0)
    with_zero = UNet(**kwargs, augment_dim=0)
    assert list(today.state_dict()) == list(with_zero.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(today.state_dict().values(), with_zero.state_dict().values()))
    assert set(UNet(**kwargs, augment_dim=3).state_dict()) == set(today.state_dict()) | {"augment_emb.weight"}
    with pytest.raises(ValueError, match="built without augment_dim"):
        today(torch.zeros(1, 1, 8, 8), torch.tensor([1]), augment_labels=torch.zeros(1, 3))


def test_the_training_step_hands_the_labels_to_the_network():
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), groups=4)
    module = DiffusionModule(
        net, GaussianDiffusion(make_betas("linear", 50, warn=False)), DDPMSampler(), torch.optim.AdamW
    )
    seen = []
    forward = lambda x, t, y=None, **kwargs: seen.append((y, kwargs)) or x
    x, aug = torch.zeros(2, 1, 8, 8), torch.ones(2, 3)
    module._denoiser(forward, (x, torch.zeros(2), aug), drop=True)(x, torch.tensor([1, 2]))
    assert seen[-1][0] is None and seen[-1][1]["augment_labels"] is aug
    assert module._denoiser(forward, (x, torch.zeros(2)), drop=True) is forward


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"augment": 1.5}, "dataset.augment must be in [0, 1], got 1.5"),
        ({"augment": -0.1}, "dataset.augment must be in [0, 1]"),
        ({"augment": "often"}, "dataset.augment must be a number"),
        ({"augment_rotate": "yes"}, "dataset.augment_rotate must be true or false"),
    ],
)
def test_bad_settings_are_refused_in_one_line(image_folder, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ImageFolderDataModule(root=str(image_folder), image_size=16, channels=3, **kwargs)
