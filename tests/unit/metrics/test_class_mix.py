"""The classes a conditional checkpoint is scored on: the dataset's proportions, reproducibly; labels it cannot know
are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_lab.errors import ConfigError
from ddpm_lab.metrics import class_counts, class_mix
from ddpm_lab.metrics.class_mix import relabel, to_model_labels


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


def test_dataset_labels_become_the_checkpoints_by_name():
    """An old checkpoint stored 1, 10, 2 (string order); today's dataset says 1, 2, 10 and has an extra class."""
    table = to_model_labels(["1", "2", "10", "extra"], ["1", "10", "2"], "digits", Path("m.ckpt"))
    assert table.tolist() == [0, 2, 1, -1]
    assert relabel(torch.tensor([2, 1, -1, 3, 0]), table).tolist() == [1, 2, -1, -1, 0]
    assert to_model_labels(None, ["a"], "digits", Path("m.ckpt")) is None  # no names: labels as they are
    assert to_model_labels(["a"], None, "digits", Path("m.ckpt")) is None
    assert torch.equal(relabel(torch.tensor([1, 0]), None), torch.tensor([1, 0]))
    counts = class_counts(relabel(torch.tensor([0, 1, 1, 2, 3]), table), 3, "digits", Path("m.ckpt"))
    assert counts.tolist() == [1, 1, 2]  # by name; the extra class is never asked for


def test_a_checkpoint_class_the_dataset_lacks_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^m.ckpt was trained on class 'owl', which pets does not have \(its"):
        to_model_labels(["cat", "dog"], ["cat", "owl"], "pets", Path("m.ckpt"))
