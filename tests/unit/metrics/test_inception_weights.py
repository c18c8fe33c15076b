"""The Inception weights on first use: fetched into torch's hub cache, kept and loaded only when their SHA-256 is the
standard file's, never downloaded with ``features.download=false``. No network: file:// URLs of files made here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch_fidelity.feature_extractor_inceptionv3 as fidelity

from ddpm_lab.artifacts import download
from ddpm_lab.artifacts.download import download_verified, sha256_of
from ddpm_lab.errors import ConfigError, WeightsMismatchError, WeightsMissingError
from ddpm_lab.metrics import InceptionFeatures, features
from ddpm_lab.metrics.features import INCEPTION_SHA256, INCEPTION_URL, INCEPTION_WEIGHTS


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch's hub cache in a fresh folder (TORCH_HOME); returns where the weights belong there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch-fidelity's network replaced by a recorder: the weights files it would have loaded."""
    paths: list[str] = []

    class Recorder:
        def __init__(self, name, features_list, weights_path):
            paths.append(weights_path)

    monkeypatch.setattr(fidelity, "FeatureExtractorInceptionV3", Recorder)
    return paths


def served(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "served.pth").write_bytes(data)
    return (tmp_path / "served.pth").as_uri()


def test_the_weights_are_the_file_torch_fidelity_downloads():
    assert INCEPTION_URL == fidelity.URL_INCEPTION_V3
    prefix = INCEPTION_WEIGHTS.removesuffix(".pth").rsplit("-", 1)[1]  # torch.hub: name-<sha256 prefix>.pth
    assert len(INCEPTION_SHA256) == 64 and INCEPTION_SHA256.startswith(prefix)


def test_a_download_is_kept_only_when_size_and_hash_match(tmp_path):
    data = b"weights" * 1000
    good = hashlib.sha256(data).hexdigest()
    target = tmp_path / "cache" / "w.pth"
    url = served(tmp_path, data)
    for sha256, size, what in (
        (good[::-1], len(data), "SHA-256"),
        (good, len(data) - 1, "more than"),
        (good, 10**6, "7000 bytes, not"),
    ):
        with pytest.raises(WeightsMismatchError, match=f"{what}.*nothing was kept: do this"):
            download_verified(url, target, sha256, size, fix="do this")
        assert list((tmp_path / "cache").iterdir()) == []  # no file, no temporary file
    assert download_verified(url, target, good, len(data), fix="do this") == target
    assert target.read_bytes() == data and sha256_of(target) == good
    with pytest.raises(WeightsMissingError, match=r"^cannot download file://.*absent\.pth .*: do this$"):
        download_verified((tmp_path / "absent.pth").as_uri(), tmp_path / "other.pth", good, 1, fix="do this")


def test_missing_weights_are_fetched_once_checked_and_then_read_from_the_cache(tmp_path, hub, loaded, monkeypatch):
    data = b"standard inception" * 100
    monkeypatch.setattr(features, "INCEPTION_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(features, "INCEPTION_BYTES", len(data))
    extractor = InceptionFeatures(url=served(tmp_path, data))
    assert hub.read_bytes() == data and loaded == [str(hub)] and extractor.name == f"inception-{INCEPTION_WEIGHTS}"

    def no_download(*args, **kwargs):
        raise AssertionError("the cached file was downloaded again")

    monkeypatch.setattr(download, "urlopen", no_download)
    InceptionFeatures(url=served(tmp_path, b"other"))
    assert loaded == [str(hub), str(hub)]


def test_a_download_with_the_wrong_hash_is_refused_in_one_line_and_nothing_is_loaded(tmp_path, hub, loaded):
    with pytest.raises(WeightsMismatchError) as err:
        InceptionFeatures(url=served(tmp_path, b"not the inception weights"))
    message = str(err.value)
    assert "\n" not in message and "nothing was kept" in message and "features.weights_path=" in message
    assert loaded == [] and list(hub.parent.iterdir()) == []  # the folder made for it stays empty


def test_a_wrong_file_already_there_is_refused_and_left_as_it_was(tmp_path, hub, loaded):
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"truncated")
    with pytest.raises(WeightsMismatchError, match=rf"{hub} is not the FID Inception weights .* delete it"):
        InceptionFeatures()
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"my own weights")
    with pytest.raises(WeightsMismatchError, match=r"mine\.pth is not the FID .*point features\.weights_path="):
        InceptionFeatures(weights_path=str(mine))
    assert hub.read_bytes() == b"truncated" and mine.read_bytes() == b"my own weights" and loaded == []


def test_download_false_never_downloads(tmp_path, hub, loaded, monkeypatch):
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("downloaded with download=false"))
    with pytest.raises(WeightsMissingError, match=r"not found at .*\(features\.download=false\): put "):
        InceptionFeatures(download=False, url=served(tmp_path, b"x"))
    with pytest.raises(ConfigError, match="features.download must be true or false"):
        InceptionFeatures(download="no")
    with pytest.raises(ConfigError, match="features.url must be an https, http, file URL, got 'ftp://x'"):
        InceptionFeatures(url="ftp://x")
    assert loaded == [] and not hub.exists()


def test_offline_is_one_line_saying_where_to_put_the_file(tmp_path, hub, loaded):
    with pytest.raises(WeightsMissingError) as err:
        InceptionFeatures(url=(tmp_path / "unreachable.pth").as_uri())
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot download file://")
    assert f"at {hub}" in message and "features.weights_path=" in message and "features=tiny" in message
