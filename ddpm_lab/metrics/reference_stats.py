"""Published reference statistics (``evaluate reference_stats=FILE.npz``): the mu and sigma of a dataset's Inception
features as pytorch-fid and EDM write them (an ``.npz`` with arrays ``mu`` (2048,) and ``sigma`` (2048, 2048)),
read as untrusted input: each array's header is checked (kind, shape, size) before a byte of its data is read,
no pickles, at most the bytes the shape needs, finite values and a symmetric sigma."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ddpm_lab.errors import ReferenceStatsError
from ddpm_lab.metrics.scores import Statistics

MAX_HEADER = 10_000  # bytes of an array's .npy header (numpy's own default limit)


def read_reference_stats(path: str | Path, num_features: int, extractor: str) -> Statistics:
    """The ``mu``/``sigma`` of ``path`` as :class:`~ddpm_lab.metrics.scores.Statistics` for an extractor of
    ``num_features`` features (named ``extractor`` in messages); one-line :class:`ReferenceStatsError` otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ReferenceStatsError(
            f"reference_stats={path}: no such file; pass an .npz of mu and sigma (as pytorch-fid and EDM write them)"
        )
    try:
        with zipfile.ZipFile(file) as archive:
            mu = _read_array(archive, "mu", (num_features,), path, extractor)
            sigma = _read_array(archive, "sigma", (num_features, num_features), path, extractor)
    except ReferenceStatsError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ReferenceStatsError(f"reference_stats={path} is not a readable .npz file ({str(e)[:120]})") from None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceStatsError(f"reference_stats={path} holds non-finite values: it is damaged")
    scale = float(np.abs(sigma).max()) or 1.0
    if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
        raise ReferenceStatsError(f"reference_stats={path}: its sigma is not symmetric, so not a covariance")
    return Statistics(torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64)))


def _read_array(
    archive: zipfile.ZipFile, key: str, shape: tuple[int, ...], path: str | Path, extractor: str
) -> np.ndarray:
    """Array ``key`` of an open .npz, refused unless its header says float32/float64 of exactly ``shape``."""
    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        found = ", ".join(sorted(n.removesuffix(".npy") for n in archive.namelist())[:8]) or "nothing"
        raise ReferenceStatsError(
            f"reference_stats={path} has no array '{key}' (it holds {found}): pass an .npz of mu and sigma"
        ) from None
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            header = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"unknown .npy format {version}")
        found_shape, fortran, dtype = header
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ReferenceStatsError(f"reference_stats={path}: '{key}' holds {dtype}, not float32/float64 numbers")
        if tuple(found_shape) != shape:
            raise ReferenceStatsError(
                f"reference_stats={path}: '{key}' has shape {tuple(found_shape)}, but features={extractor} needs "
                f"{shape}: statistics must come from the same feature layer (published ones are Inception pool3, "
                f"2048 features: features=inception)"
            )
        size = int(np.prod(shape)) * dtype.itemsize
        data = f.read(size + 1)  # never more than the shape needs: a member claiming less but holding more is refused
    if len(data) != size:
        raise ReferenceStatsError(f"reference_stats={path}: '{key}' holds {len(data)} bytes, its shape needs {size}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
