"""Published reference statistics (``reference_stats=``): an .npz of mu/sigma as pytorch-fid and EDM write it is read
and scores as the features it came from; a wrong layer, a hostile or damaged file is refused in one line, before
its data is read."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab.errors import ReferenceStatsError
from ddpm_lab.metrics import read_reference_stats, statistics

D = 8


def stats_file(path: Path, mu: np.ndarray, sigma: np.ndarray, compressed: bool = True, **extra) -> Path:
    save = np.savez_compressed if compressed else np.savez
    save(path, mu=mu, sigma=sigma, **extra)
    return path


def features() -> torch.Tensor:
    return torch.randn(50, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_a_pytorch_fid_npz_reads_back_as_its_statistics(tmp_path):
    stats = statistics(features())
    mu, sigma = stats.mu.numpy(), stats.sigma.numpy()
    for i, (compressed, dtype) in enumerate([(True, np.float64), (False, np.float32)]):  # pytorch-fid, EDM
        path = stats_file(tmp_path / f"ref{i}.npz", mu.astype(dtype), sigma.astype(dtype), compressed, mu_s=mu)
        read = read_reference_stats(path, D, "tiny8")
        assert read.mu.dtype == read.sigma.dtype == torch.float64 and read.n is None
        assert torch.allclose(read.mu, stats.mu, atol=1e-6) and torch.allclose(read.sigma, stats.sigma, atol=1e-6)


def raw_npy(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"") -> bytes:
    """A .npy member whose header claims ``shape`` and ``descr`` whatever ``data`` follows."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_hostile_and_mismatched_files_are_refused_before_their_data_is_read(tmp_path):
    mu, sigma = np.zeros(D), np.eye(D)
    good_mu = io.BytesIO()
    np.save(good_mu, mu)
    (tmp_path / "text.npz").write_text("hello")
    no_sigma = tmp_path / "no_sigma.npz"
    np.savez(no_sigma, mu=mu, arr_0=sigma)
    objects = tmp_path / "objects.npz"
    np.savez(objects, mu=np.array([{"a": 1}] * D, dtype=object), sigma=sigma)
    cases = {
        "missing": (tmp_path / "nowhere.npz", "no such file"),
        "not a zip": (tmp_path / "text.npz", "not a readable .npz"),
        "no sigma": (no_sigma, "has no array 'sigma' (it holds arr_0, mu)"),
        "another layer": (
            stats_file(tmp_path / "inception.npz", np.zeros(2048, dtype=np.float32), np.zeros((1, 1))),
            "'mu' has shape (2048,), but features=tiny8 needs (8,)",
        ),
        # a 10^6 x 10^6 sigma claimed in the header, then nothing: refused on the shape, never allocated
        "huge header": (
            zip_of(tmp_path / "huge.npz", {"mu.npy": good_mu.getvalue(), "sigma.npy": raw_npy((10**6, 10**6))}),
            "'sigma' has shape (1000000, 1000000)",
        ),
        "truncated": (
            zip_of(tmp_path / "short.npz", {"mu.npy": good_mu.getvalue(), "sigma.npy": raw_npy((D, D), data=b"x" * 9)}),
            "'sigma' holds 9 bytes, its shape needs 512",
        ),
        "pickled objects": (objects, "holds object, not float32/float64"),
        "not finite": (stats_file(tmp_path / "nan.npz", np.full(D, np.nan), sigma), "non-finite values"),
        "not a covariance": (stats_file(tmp_path / "tri.npz", mu, np.triu(np.ones((D, D)))), "not symmetric"),
        "integers": (stats_file(tmp_path / "ints.npz", np.zeros(D, dtype=np.int64), sigma), "holds int64"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(ReferenceStatsError) as caught:
            read_reference_stats(path, D, "tiny8")
        assert message in str(caught.value), (name, str(caught.value))
        assert "\n" not in str(caught.value)
