"""FID/KID plumbing with the small feature network: ~0 against itself, large against noise, stable in n; FID's
bootstrap spread, the real-vs-real floor and reference statistics."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm_lab.errors import WeightsMissingError
from ddpm_lab.metrics import (
    FeatureSet,
    InceptionFeatures,
    Statistics,
    TinyFeatures,
    cached_features,
    chunks,
    extract_features,
    format_floor,
    format_scores,
    frechet_distance,
    real_floor,
    scores,
    statistics,
)
from ddpm_lab.metrics.scores import _Given


def blobs(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Coloured Gaussian blobs at random positions: a simple 'dataset' distribution, uint8 (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, size)
    c = torch.rand(n, 2, generator=g) * 1.2 - 0.6
    img = torch.exp(
        -((axis[None, :, None] - c[:, 0, None, None]) ** 2 + (axis[None, None, :] - c[:, 1, None, None]) ** 2) / 0.1
    )
    return (img[:, None] * torch.rand(n, 3, 1, 1, generator=g) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def extractor() -> TinyFeatures:
    return TinyFeatures()


def features(extractor, images):
    return extract_features(extractor, chunks(images, 200))


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_large(extractor):
    real = features(extractor, blobs(400, 1))
    same = scores(real, real, kid_subsets=5)
    other = scores(real, features(extractor, blobs(400, 2)), kid_subsets=5)
    noise = scores(real, features(extractor, torch.randint(0, 256, (400, 3, 16, 16), dtype=torch.uint8)), kid_subsets=5)
    assert abs(same["fid"]) < 1e-6
    assert other["fid"] < 0.05 * noise["fid"]  # same distribution, other draw: tiny next to noise
    assert noise["fid"] > 1.0 and noise["kid_mean"] > 100 * abs(other["kid_mean"])
    assert (same["n_fake"], same["n_real"]) == (400, 400)
    assert "n=400 generated vs 400 real" in format_scores(noise, extractor.name)


def test_more_samples_change_nothing_systematic(extractor):
    """FID of a same-distribution draw shrinks towards 0 as n grows; against noise it stays put."""
    real = features(extractor, blobs(1200, 3))
    noise = torch.randint(0, 256, (800, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fake_small, fake_big = features(extractor, blobs(200, 4)), features(extractor, blobs(800, 4))
    noise_small, noise_big = features(extractor, noise[:200]), features(extractor, noise)
    same_small, same_big = scores(real, fake_small, kid_subsets=5)["fid"], scores(real, fake_big, kid_subsets=5)["fid"]
    far_small, far_big = scores(real, noise_small, kid_subsets=5)["fid"], scores(real, noise_big, kid_subsets=5)["fid"]
    assert same_big <= same_small
    assert abs(far_big - far_small) < 0.1 * far_big


def test_grayscale_images_are_scored_as_rgb(extractor):
    gray = blobs(50, 5)[:, :1]
    assert features(extractor, gray).features.shape == (50, extractor.num_features)


def test_tiny_features_are_the_same_in_every_process():
    x = blobs(8, 6)
    torch.manual_seed(123)
    a = TinyFeatures()(x)["features"]
    torch.manual_seed(456)
    assert torch.equal(a, TinyFeatures()(x)["features"])


def test_missing_inception_weights_say_where_to_put_them(tmp_path):
    path = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(WeightsMissingError, match=r"not found at .*inception\.pth.*features\.weights_path"):
        InceptionFeatures(weights_path=str(path))


def test_feature_cache_is_reused_and_rebuilt_when_its_description_changes(tmp_path, extractor):
    calls = []

    def compute():
        calls.append(1)
        return features(extractor, blobs(20, 7))

    path = tmp_path / "stats.pt"
    first, hit1 = cached_features(path, compute, {"size": 16})
    again, hit2 = cached_features(path, compute, {"size": 16})
    _, hit3 = cached_features(path, compute, {"size": 32})
    assert (hit1, hit2, hit3) == (False, True, False) and len(calls) == 2
    assert torch.equal(first.features, again.features)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.pt"]  # no temp files left behind


def test_our_frechet_distance_is_torchmetrics_fid():
    """The one FID formula (eigenvalues of the symmetric Σ_a^½ Σ_b Σ_a^½) against torchmetrics' (of Σ_a Σ_b)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(200, 16, generator=g, dtype=torch.float64) * 1.3 + 0.2
    theirs = FrechetInceptionDistance(feature=_Given(16))
    theirs.update(real, real=True)
    theirs.update(fake, real=False)
    ours = frechet_distance(statistics(real), statistics(fake))
    assert ours == pytest.approx(float(theirs.compute()), rel=1e-6) and ours > 1


def test_fid_spread_is_seeded_and_shrinks_with_more_samples(extractor):
    real = features(extractor, blobs(500, 8))
    small, big = features(extractor, blobs(80, 9)), features(extractor, blobs(500, 9))
    first = scores(real, small, kid_subsets=5, bootstrap=8, seed=1)
    again = scores(real, small, kid_subsets=5, bootstrap=8, seed=1)
    other_seed = scores(real, small, kid_subsets=5, bootstrap=8, seed=2)
    assert first["fid_std"] == again["fid_std"] and first["fid_std"] != other_seed["fid_std"]
    assert first["fid"] == other_seed["fid"]  # the seed moves the resamples, not the score
    assert first["fid_bootstrap"] == 8 and 0 < first["fid_std"] < first["fid"]
    assert scores(real, big, kid_subsets=5, bootstrap=8)["fid_std"] < first["fid_std"]
    assert "fid_std" not in scores(real, small, kid_subsets=5)  # bootstrap=0: none
    assert f"FID {first['fid']:.3f} ± {first['fid_std']:.3f}, KID" in format_scores(first, "tiny")


def test_real_floor_uses_disjoint_subsets_and_falls_back_to_halves(extractor):
    real = features(extractor, blobs(600, 10))
    floor = real_floor(real, 200, seed=0, kid_subsets=5)
    assert floor["method"] == "disjoint" and floor["n"] == 200 and floor["fid"] > 0
    # a real-vs-real floor is far below what a different distribution scores at the same n
    noise = torch.randint(0, 256, (200, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert floor["fid"] < 0.1 * scores(real, features(extractor, noise), kid_subsets=5)["fid"]
    halves = real_floor(real, 400, seed=0, kid_subsets=5)  # 2 x 400 > 600 real images
    assert halves["method"] == "split-half" and halves["n"] == 300
    assert real_floor(real, 200, seed=0, kid_subsets=5) == floor  # seeded
    assert "n=200 each" in format_floor(floor) and "two disjoint random subsets" in format_floor(floor)
    with pytest.raises(ValueError, match="at least 4 real images"):
        real_floor(FeatureSet(real.features[:3]), 2, seed=0)


def test_reference_statistics_give_the_same_fid_and_no_kid(extractor):
    real, fake = features(extractor, blobs(400, 11)), features(extractor, blobs(300, 12))
    from_features = scores(real, fake, kid_subsets=5)
    stats = statistics(real.features)
    published = Statistics(stats.mu, stats.sigma)  # as a .npz holds them: no count, no features
    from_stats = scores(published, fake, kid_subsets=5, bootstrap=4)
    assert from_stats["fid"] == pytest.approx(from_features["fid"], rel=1e-9)
    assert from_stats["kid_mean"] is None and from_stats["n_real"] is None and from_stats["fid_std"] > 0
    line = format_scores(from_stats, "tiny")
    assert "KID" not in line and "vs reference statistics" in line


def test_scores_do_not_depend_on_the_callers_thread_count():
    """Lightning gives each of W processes 1/W of the cores: rank 0 must score as one process does (sums and
    eigendecompositions add in an order that depends on the thread count; on this machine FID moved in its 14th
    digit between 1 and 2 threads before scoring fixed it)."""
    g = torch.Generator().manual_seed(0)
    real = FeatureSet(torch.randn(200, 64, generator=g, dtype=torch.float64))
    fake = FeatureSet(torch.randn(200, 64, generator=g, dtype=torch.float64) * 1.1)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(scores(real, fake, kid_subsets=5, bootstrap=3))
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1]
