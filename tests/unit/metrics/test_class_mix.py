"""The classes a conditional checkpoint is scored on: the dataset's proportions, reproducibly; labels it cannot know
are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_lab.errors import ConfigError
from ddpm_lab.metrics import class_counts, class_mix


def test_classes_are_drawn_in_the_datasets_proportions_reproducibly():
    counts = torch.tensor([600, 300, 100, 0])
    labels = class_mix(counts, 30, seed=0)
    assert labels.bincount(minlength=4).tolist() == [18, 9, 3, 0]
    assert torch.equal(labels, class_mix(counts, 30, seed=0)) and not torch.equal(labels, class_mix(counts, 30, seed=1))
    assert sorted(class_mix(torch.tensor([5, 5, 5]), 7, seed=0).bincount().tolist()) == [2, 2, 3]


def test_class_counts_count_the_labelled_images_only():
    labels = torch.tensor([0, 2, 2, -1, 2, 0])
    assert class_counts(labels, 4, "pets", Path("m.ckpt")).tolist() == [2, 0, 3, 0]


def test_a_label_the_checkpoint_does_not_know_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^pets has labels up to 3, but m.ckpt knows 2 class\(es\): pass the"):
        class_counts(torch.tensor([0, 3]), 2, "pets", Path("m.ckpt"))


def test_no_labels_at_all_draws_every_class_equally(caplog):
    with caplog.at_level("WARNING"):
        counts = class_counts(torch.full((5,), -1), 3, "pets", Path("m.ckpt"))
    assert counts.tolist() == [1, 1, 1] and "pets has no class labels" in caplog.text
