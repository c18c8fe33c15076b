"""dataset=digits (data/datasets/digits.py): scikit-learn's bundled images, offline."""

from __future__ import annotations

import socket

import pytest
import torch

from ddpm_lab.data import DigitsDataModule


def test_digits_load_offline_with_labels_and_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("dataset=digits tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    sizes = {}
    for split in ("train", "test", "all"):
        dm = DigitsDataModule(split=split, val_size=0)
        dm.prepare_data()
        dm.setup("fit")
        sizes[split] = len(dm.train_images)
    assert sizes == {"train": 1500, "test": 297, "all": 1797}
    images, labels = dm.train_images, dm.train_labels
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.uint8
    assert int(images.min()) == 0 and int(images.max()) == 255  # the 0-16 grey levels stretched to 0-255
    assert sorted(set(labels.tolist())) == list(range(10)) and torch.bincount(labels).min() >= 170  # ~180 each
    assert dm.class_names == list("0123456789")  # what conditioning=class reads
    # Upsampled, not padded: the digit's strokes fill the 16 px frame like the 8 px original fills its own.
    assert images.float().mean(dim=0)[0, 4:12, 4:12].mean() > 2 * images.float().mean(dim=0)[0, :, :2].mean()


def test_digits_config_is_offline_and_16px(cfg_train) -> None:
    cfg = cfg_train("dataset=digits")
    assert (cfg.dataset.image_size, cfg.dataset.channels, cfg.model.image_size) == (16, 1, 16)
    assert "download" not in cfg.dataset and "root" not in cfg.dataset
