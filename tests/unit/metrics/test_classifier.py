"""The ``features=classifier`` yardstick: it learns labelled images, is cached safely, and scores class accuracy."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.data.datasets.digits import load_digits
from ddpm_lab.errors import ConfigError
from ddpm_lab.metrics import ClassifierFeatures, chunks, class_accuracy, extract_features, scores


def patterns(n_per_class: int, seed: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, uint8 grayscale (N, 1, size, size): horizontal stripes, vertical stripes, a centred square."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(size)
    stripes = ((axis // 2) % 2).float()
    square = torch.zeros(size, size)
    square[size // 4 : -size // 4, size // 4 : -size // 4] = 1
    protos = torch.stack([stripes[:, None].expand(size, size), stripes[None, :].expand(size, size), square])
    labels = torch.arange(3).repeat_interleave(n_per_class)
    images = protos[labels] * torch.empty(len(labels), 1, 1).uniform_(0.5, 1.0, generator=g)
    images = images + 0.25 * torch.rand(len(labels), size, size, generator=g)  # noisy, of varying contrast
    return (images.clamp(0, 1)[:, None] * 255).to(torch.uint8), labels


SMALL = {"epochs": 6, "batch_size": 16, "heldout": 0.25, "width": 8, "num_features": 16}


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return patterns(40, seed=0)


def test_it_learns_a_small_labelled_dataset_and_its_features_separate_the_classes(data):
    images, labels = data
    clf = ClassifierFeatures(**SMALL)
    trained = clf.fit(images, labels, folder=None)
    assert trained.n_heldout == 30 and trained.n_train == 90
    assert trained.heldout_accuracy >= 0.95
    test_images, test_labels = patterns(20, seed=1)
    assert (clf.predict(test_images) == test_labels).double().mean() >= 0.95
    assert "held-out accuracy" in clf.summary() and clf.name.startswith("classifier16-")
    # a domain FID: one class against all three is far; a fresh draw of all three is near
    real = extract_features(clf, chunks(images, 64))
    same = scores(real, extract_features(clf, chunks(test_images, 64)), kid_subsets=5)
    one_class = scores(real, extract_features(clf, chunks(test_images[:20], 64)), kid_subsets=5)
    assert real.features.shape == (120, 16) and real.logits is None  # no Inception Score from it
    assert one_class["fid"] > 5 * same["fid"]


def test_training_is_deterministic_from_the_seed(data):
    images, labels = data
    nets = [ClassifierFeatures(**SMALL, seed=s) for s in (3, 3, 4)]
    for clf in nets:
        clf.fit(images, labels, folder=None)
    a, b, c = (torch.cat([p.flatten() for p in clf.net.parameters()]) for clf in nets)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_cache_is_reused_keyed_on_the_images_and_a_bad_file_is_retrained(data, tmp_path, caplog):
    images, labels = data
    first = ClassifierFeatures(**SMALL).fit(images, labels, folder=tmp_path)
    (path,) = tmp_path.iterdir()
    again = ClassifierFeatures(**SMALL).fit(images, labels, folder=tmp_path)
    assert not first.from_cache and again.from_cache and again.heldout_accuracy == first.heldout_accuracy
    assert all(torch.equal(p, q) for p, q in zip(first.net.state_dict().values(), again.net.state_dict().values()))
    # other images or other settings: another file
    ClassifierFeatures(**SMALL).fit(images[:-1], labels[:-1], folder=tmp_path)
    ClassifierFeatures(**{**SMALL, "epochs": 1}).fit(images, labels, folder=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    # damaged and tampered files: a warning, a retrained network, a good file again
    stored = torch.load(path, weights_only=True)
    stored["state_dict"]["head.weight"] = torch.zeros(5, 5)
    for bad in (b"\x00garbage", stored):
        if isinstance(bad, bytes):
            path.write_bytes(bad)
        else:
            torch.save(bad, path)
        caplog.clear()
        trained = ClassifierFeatures(**SMALL).fit(images, labels, folder=tmp_path)
        assert not trained.from_cache and "unusable" in caplog.text
        assert trained.heldout_accuracy == first.heldout_accuracy  # the same seed: the same network
    assert ClassifierFeatures(**SMALL).fit(images, labels, folder=tmp_path).from_cache
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_images_without_two_labelled_classes_are_refused(data):
    images, labels = data
    with pytest.raises(ConfigError, match="features=classifier needs images of at least two labelled classes"):
        ClassifierFeatures().fit(images, torch.full_like(labels, -1), folder=None, source="the folder")
    with pytest.raises(ConfigError, match="but the folder has 1"):
        ClassifierFeatures().fit(images, torch.zeros_like(labels), folder=None, source="the folder")
    with pytest.raises(RuntimeError, match="fit"):
        ClassifierFeatures().predict(images)


def test_class_accuracy_overall_and_per_class():
    wanted = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2])
    result = class_accuracy(predicted, wanted, class_names=["zero", "one", "two", "three"])
    assert result["class_accuracy"] == pytest.approx(6 / 8)
    assert result["per_class"] == {
        "zero": {"n": 4, "accuracy": 0.75},
        "one": {"n": 2, "accuracy": 0.5},
        "two": {"n": 2, "accuracy": 1.0},
        "three": {"n": 0, "accuracy": None},  # never asked for
    }
    assert list(class_accuracy(predicted, wanted)["per_class"]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="equal"):
        class_accuracy(predicted[:3], wanted)


def test_a_grey_background_does_not_change_the_digit_it_sees():
    """Young diffusion models draw digits on grey; a classifier that saw only black backgrounds called most of
    them "8" on MNIST (class accuracy 42% on samples that were 88% right once their background was removed)."""
    train_images, train_labels = load_digits(train=True)
    test_images, test_labels = load_digits(train=False)
    clf = ClassifierFeatures(epochs=6, width=16, num_features=16, heldout=0.1)
    clf.fit(train_images, train_labels, folder=None)
    grey = (80 + test_images.float() * (255 - 80) / 255).round().to(torch.uint8)
    assert (clf.predict(test_images) == test_labels).double().mean() >= 0.85
    assert (clf.predict(grey) == test_labels).double().mean() >= 0.85  # 0.77 without the augmentation
