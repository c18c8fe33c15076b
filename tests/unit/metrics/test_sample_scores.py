"""Scoring a checkpoint's samples: seeded uint8 samples, their scores and report lines, real-image features cached
by what they were computed from, and seeded subsets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_lab import GaussianDiffusion, UNet, make_betas, make_sampler
from ddpm_lab.metrics import (
    ScoreSettings,
    TinyFeatures,
    chunks,
    extract_features,
    per_class_lines,
    random_subset,
    real_features,
    sample_and_score,
    score_images,
    score_line,
)
from ddpm_lab.metrics.class_mix import to_model_labels
from ddpm_lab.metrics.classifier import ClassifierFeatures

SETTINGS = ScoreSettings(
    device=torch.device("cpu"),
    n=6,
    n_real=None,
    batch_size=4,
    seed=0,
    kid_subsets=3,
    kid_subset_size=4,
    is_splits=2,
    guidance_rescale=0.0,
)
DATASET = {"_target_": "ddpm_lab.data.ImageFolderDataModule", "root": "/data/pets", "image_size": 8, "channels": 3}


def real_images(n: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_real_features_are_computed_once_then_read_back(tmp_path: Path):
    calls = []

    def load() -> torch.Tensor:
        calls.append(1)
        return real_images()

    extractor = TinyFeatures(num_features=8, width=4)
    first, path = real_features(load, DATASET, extractor, tmp_path, SETTINGS)
    second, again = real_features(load, DATASET, extractor, tmp_path, SETTINGS)
    assert len(calls) == 1 and path == again and path.parent == tmp_path
    assert path.name.startswith("ImageFolderDataModule_train_8px_tiny8w4s0_all_") and path.suffix == ".pt"
    assert torch.equal(first.features, second.features) and len(first) == 12
    fewer, other = real_features(load, DATASET, extractor, tmp_path, ScoreSettings(**{**vars(SETTINGS), "n_real": 5}))
    assert len(calls) == 2 and other != path and "_5_" in other.name and len(fewer) == 5


def test_random_subset_is_seeded_and_keeps_everything_when_not_smaller():
    images = torch.arange(10)
    assert torch.equal(random_subset(images, None, 0), images) and torch.equal(random_subset(images, 10, 0), images)
    picked = random_subset(images, 4, seed=3)
    assert len(picked) == 4 and len(set(picked.tolist())) == 4
    assert torch.equal(picked, random_subset(images, 4, seed=3)) and not torch.equal(
        picked, random_subset(images, 4, 4)
    )


def test_samples_are_drawn_and_scored_reproducibly():
    net = UNet(in_channels=3, image_size=8, base_channels=8, channel_mults=(1,), attention_resolutions=())
    diffusion = GaussianDiffusion(make_betas("cosine", timesteps=20))
    sampler = make_sampler("ddim", steps=3)
    extractor = TinyFeatures(num_features=8, width=4)
    real = extract_features(extractor, chunks(real_images(), 4))
    images, row = sample_and_score(net, diffusion, sampler, real, extractor, SETTINGS, guidance=None)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 8, 8)
    assert "guidance" not in row and row["sampling_seconds"] >= 0 and row["n_fake"] == 6 and row["n_real"] == 12
    again, second = sample_and_score(net, diffusion, sampler, real, extractor, SETTINGS)
    assert torch.equal(images, again) and second["fid"] == pytest.approx(row["fid"])


def test_score_lines_name_the_guidance_scale_and_the_class_accuracy():
    row = {"fid": 12.3456, "kid_mean": 0.01, "kid_std": 0.002, "n_fake": 8, "n_real": 48}
    plain = score_line(row, "tiny")
    assert plain.startswith("FID 12.346, KID 0.01000 ± 0.00200") and "class accuracy" not in plain
    row |= {"class_accuracy": 0.5, "per_class": {"cat": {"n": 3, "accuracy": 1.0}, "dog": {"n": 0, "accuracy": None}}}
    line = score_line(row, "tiny", 2.0)
    assert line.startswith("guidance 2: FID 12.346") and line.endswith(", class accuracy 50.00%")
    assert per_class_lines(row) == ["  class cat: 3 samples, accuracy 1.0", "  class dog: 0 samples, accuracy None"]
    assert per_class_lines({"fid": 1.0}) == []


def halves(side: str, n: int, seed: int) -> torch.Tensor:
    """n uint8 RGB 8×8 images bright on their ``left`` or ``right`` half, dark on the other."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[..., :4] += 200 if side == "left" else 0
    x[..., 4:] += 200 if side == "right" else 0
    return x


def test_class_accuracy_compares_classes_by_name(tmp_path: Path):
    """The classifier learns the dataset's order (left, right); the checkpoint's is (right, left). Samples of the
    checkpoint's class 0 ("right") are right, counted by name; by index they would all be wrong."""
    images = torch.cat([halves("left", 40, 0), halves("right", 40, 1)])
    extractor = ClassifierFeatures(num_features=8, width=4, epochs=4, max_images=80, batch_size=16)
    extractor.fit(images, torch.arange(2).repeat_interleave(40), tmp_path)
    real = extract_features(extractor, chunks(images, 16))
    samples, asked = halves("right", 8, 2), torch.zeros(8, dtype=torch.long)  # the checkpoint's class 0
    to_model = to_model_labels(["left", "right"], ["right", "left"], "halves", Path("m.ckpt"))
    by_name = score_images(real, samples, extractor, SETTINGS, asked, ["right", "left"], to_model)
    by_index = score_images(real, samples, extractor, SETTINGS, asked, ["right", "left"])
    assert by_name["class_accuracy"] == 1.0 and by_name["per_class"]["right"] == {"n": 8, "accuracy": 1.0}
    assert by_index["class_accuracy"] == 0.0
