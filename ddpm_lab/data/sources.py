"""Readers that turn datasets on disk into one uint8 tensor (N, C, H, W) plus integer labels (−1: unlabeled)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ON_ERROR = ("skip", "raise")
CACHE_VERSION = 2  # bump when decoding changes, so old caches are rebuilt (2: 16-bit images, content keys)
# Images we decode at most: 64 megapixels (8192×8192), proportions up to 32:1 (see check_image_size).
MAX_IMAGE_PIXELS = 1 << 26
MAX_ASPECT_RATIO = 32
# What PIL raises for broken files: truncated data (OSError), unknown format (UnidentifiedImageError, an OSError),
# corrupt chunks (SyntaxError), bad headers (ValueError, EOFError), absurd sizes (DecompressionBombError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fit_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Resize the shorter side to ``image_size``, center-crop square, convert to ``channels`` (uint8 in and out)."""
    if images.shape[1] != channels:
        if channels == 1:  # ITU-R 601-2 luma, as PIL's "L"
            images = TF.rgb_to_grayscale(images[:, :3])
        elif images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        else:
            images = images[:, :3]
    if images.shape[-2:] != (image_size, image_size):
        images = TF.resize(images, image_size, antialias=True)
        images = TF.center_crop(images, [image_size, image_size])
    return images.contiguous()


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively, by extension), skipping hidden folders such as the cache."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(s.startswith(".") for s in p.relative_to(root).parts[:-1])
        and p.is_file()
    )


class ImageSizeError(ValueError):
    """An image whose header announces a size we refuse to decode (a decompression bomb, or absurd proportions)."""


def check_image_size(width: int, height: int) -> None:
    """Refuse, from the header alone, images whose decoding or resizing would cost absurd memory.

    A 300000×1 PNG is a few hundred bytes, but resizing its shorter side to S makes a 300000·S × S image.
    """
    if width < 1 or height < 1:
        raise ImageSizeError(f"{width}×{height} pixels: empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageSizeError(
            f"{width}×{height} pixels, over the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels we decode "
            "(a decompression bomb?)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageSizeError(
            f"{width}×{height} pixels: proportions over {MAX_ASPECT_RATIO}:1 cannot be resized and center-cropped "
            "to a square"
        )


def _sixteen_bit_to_8(im: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``) or 32-bit integer (``I``, how some readers return 16-bit data) grey image as ``L``,
    scaled from the 16-bit range (PIL's own ``convert("L")`` clips everything above 255 to white)."""
    values = np.asarray(im).astype(np.int64)
    return Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")


def decode_image(path: str | Path, image_size: int, channels: int) -> np.ndarray:
    """One file → (S, S, C) uint8: shorter side resized to S (bicubic), center-cropped, converted to L or RGB.

    The size in the header is checked first (:func:`check_image_size`); 16-bit grey images are scaled to 8 bits.
    """
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as im:
        check_image_size(*im.size)
        if im.format == "JPEG":  # let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying >= S: much faster
            im.draft(mode, (image_size, image_size))
        if im.mode.startswith("I;16") or im.mode == "I":
            im = _sixteen_bit_to_8(im)
        im = im.convert(mode)
        w, h = im.size
        if min(w, h) != image_size:
            scale = image_size / min(w, h)
            size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
            im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        # numpy, not pil_to_tensor: the per-image torch overhead was most of the decode time for small images
        array = np.asarray(im)[top : top + image_size, left : left + image_size]
    return array.reshape(image_size, image_size, channels)


def _describe(bad: Sequence[str]) -> str:
    return "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")


def report_bad_files(bad: Sequence[str], where: Path, on_error: str, kept: int) -> None:
    """Apply ``dataset.on_error`` to unreadable files: warn and go on (``skip``), or stop naming them (``raise``)."""
    if not bad:
        return
    if on_error == "raise" or kept == 0:
        raise DatasetError(
            f"{len(bad)} unreadable image(s) under {where}: {_describe(bad)}. Remove or fix them"
            + (", or set dataset.on_error=skip to leave them out" if kept else "")
        )
    log.warning("skipped %d unreadable image(s) under %s: %s", len(bad), where, _describe(bad))


def decode_files(
    files: Sequence[Path], image_size: int, channels: int, workers: int | None = None
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode ``files`` on a thread pool (PIL releases the GIL while decoding).

    Returns the (K, C, S, S) uint8 images that decoded, their positions in ``files``, and one
    ``"path (Error: message)"`` line per file that did not.
    """
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, image_size, channels)
        except DECODE_ERRORS as e:
            return f"{path} ({type(e).__name__}: {e})"

    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    kept: list[int] = []
    bad: list[str] = []
    with ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(one, files, chunksize=64)):
            if isinstance(result, str):
                bad.append(result)
            else:
                out[len(kept)] = result
                kept.append(i)
    return torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).contiguous(), kept, bad


def _cache_key(files: Sequence[Path], labels: Sequence[int], where: Path, image_size: int, channels: int) -> str:
    """A hash of everything the decoded tensor depends on: each file's contents (blake2b of its bytes, ~0.1 s for
    10k MNIST PNGs), its path below ``where`` and label, the size, the channels and the decoder version.

    Contents, not sizes and mtimes: a replaced image (same size, a copied-back mtime) is never served stale.
    """
    key = hashlib.blake2b(json.dumps([CACHE_VERSION, image_size, channels]).encode(), digest_size=16)
    prefix = str(where) + os.sep
    for file, label in zip(files, labels, strict=True):
        path = str(file)
        try:
            with open(path, "rb") as f:
                digest = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
        except OSError as e:  # unreadable: decoding will report it; its error is part of what is cached
            digest = type(e).__name__
        name = path[len(prefix) :] if path.startswith(prefix) else path
        key.update(f"{name}\0{label}\0{digest}\n".encode())
    return key.hexdigest()[:24]


def _read_cache(cache: Path, key: str, image_size: int, channels: int) -> dict | None:
    """The decoded cache in ``cache`` when it is whole and made for ``key``; None (with a warning) when damaged."""
    try:
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or stored.get("key") != key:
            raise ValueError("it was not written for these files")
        images, labels, bad = stored.get("images"), stored.get("labels"), stored.get("bad")
        if not (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.shape[1:] == (channels, image_size, image_size)
            and isinstance(labels, torch.Tensor)
            and labels.dtype == torch.long
            and labels.shape == (len(images),)
            and isinstance(bad, list)
            and all(isinstance(b, str) for b in bad)
        ):
            raise ValueError("its contents do not have the expected shapes and types")
    except Exception as e:  # truncated, foreign or edited: rebuild it, never a traceback on every later run
        log.warning("decoded cache %s is damaged (%s): decoding the images again and rewriting it", cache, e)
        return None
    return stored


def load_files(
    files: Sequence[Path],
    labels: Sequence[int],
    image_size: int,
    channels: int,
    on_error: str,
    where: Path,
    cache_dir: Path | None = None,
    cache_min_files: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``files`` once into (N, C, S, S) uint8 plus labels.

    With ``cache_dir`` set and at least ``cache_min_files`` files, the decoded tensor is kept in ``cache_dir``
    (a folder of ours, never the dataset's). The cache file is named by a hash of the files' contents, paths and
    labels, ``image_size`` and ``channels``, so any change makes a new one; it is written to a temporary name and
    renamed, so it is never half-written, and a damaged one is reported, decoded again and replaced.
    """
    if not files:
        raise DatasetError(
            f"{where} holds no images ({', '.join(IMAGE_EXTENSIONS)}): point dataset.root at a folder that does"
        )
    cache = key = None
    if cache_dir is not None and len(files) >= cache_min_files:
        key = _cache_key(files, labels, where, image_size, channels)
        cache = Path(cache_dir) / f"{where.name or 'images'}-{image_size}px-{channels}ch-{key}.pt"
        stored = _read_cache(cache, key, image_size, channels) if cache.is_file() else None
        if stored is not None:
            report_bad_files(stored["bad"], where, on_error, len(stored["images"]))
            log.info("decoded cache %s: %d images", cache, len(stored["images"]))
            return stored["images"], stored["labels"]
    images, kept, bad = decode_files(files, image_size, channels)
    report_bad_files(bad, where, on_error, len(kept))
    targets = torch.as_tensor(labels, dtype=torch.long)[torch.as_tensor(kept, dtype=torch.long)]
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cache, durable=False) as tmp:
                torch.save({"key": key, "images": images, "labels": targets, "bad": bad}, tmp)
            log.info("wrote decoded cache %s (%.1f MB)", cache, images.numel() / 1e6)
        except OSError as e:  # a read-only cache folder: decode again next time
            log.warning("could not write the decoded cache %s (%s): it will be decoded again next run", cache, e)
    return images, targets


def index_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``root``, their labels (index of the first sub-folder; −1 directly in ``root``), classes."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist: set dataset.root to a folder of images")
    files = list_image_files(root)
    classes = sorted({f.relative_to(root).parts[0] for f in files if f.parent != root})
    class_index = {c: i for i, c in enumerate(classes)}
    labels = [class_index[f.relative_to(root).parts[0]] if f.parent != root else -1 for f in files]
    return files, labels, classes


def load_image_folder(
    root: str | Path,
    image_size: int,
    channels: int,
    on_error: str = "skip",
    cache_dir: Path | None = None,
    cache_min_files: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image under ``root`` once. Sub-folders of ``root`` become class labels when present.

    ``on_error``: ``skip`` (warn and leave out unreadable files) or ``raise`` (stop, naming them).
    Returns images (N, C, S, S) uint8, labels (N,) int64 (−1 for files directly in ``root``) and the class names.
    """
    root = Path(root).expanduser()
    files, labels, classes = index_image_folder(root)
    images, targets = load_files(files, labels, image_size, channels, on_error, root, cache_dir, cache_min_files)
    return images, targets, classes


def missing_files_error(
    name: str, folder: Path, expected: Sequence[str], how: str, cause: Exception | None = None
) -> DatasetError:
    """The one message for a dataset that is not on disk: which folder, which files, how to get them."""
    reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return DatasetError(f"{name} not found in {folder}{reason}: expected {', '.join(expected)}. {how}")


def load_mnist(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One MNIST split from its IDX files in ``root/MNIST/raw`` (raw or ``.gz``), read by torchvision's parser."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    from torchvision.datasets.utils import extract_archive

    raw = Path(root).expanduser() / "MNIST" / "raw"
    paths = [raw / name for name in MNIST_FILES[train]]
    for path in paths:
        gz = path.with_name(path.name + ".gz")
        if not path.is_file() and gz.is_file():
            extract_archive(str(gz), str(raw))  # what torchvision's download does after fetching
    if not all(p.is_file() for p in paths):
        raise missing_files_error(
            "MNIST",
            raw,
            [f"{n}(.gz)" for n in MNIST_FILES[train]],
            "Set dataset.download=true on a machine with internet, "
            "or copy the files there and set dataset.download=false",
        )
    try:
        images, labels = read_image_file(str(paths[0])), read_label_file(str(paths[1]))
    except (AssertionError, RuntimeError, ValueError) as e:
        raise DatasetError(
            f"MNIST files in {raw} are corrupt ({type(e).__name__}: {e}): delete them and download again"
        ) from e
    if len(images) != len(labels):
        raise DatasetError(
            f"MNIST in {raw}: {len(images)} images but {len(labels)} labels: delete the files and download again"
        )
    return images.unsqueeze(1).contiguous(), labels.long()


# scikit-learn's 8x8 digits (UCI "Optical Recognition of Handwritten Digits", test part): 1,797 images, 17 grey
# levels (0-16). The first DIGITS_TRAIN are our "train" split, the rest "test".
DIGITS_TRAIN = 1500
DIGITS_LEVELS = 16


def load_digits(train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N, 1, 8, 8) uint8 and (N,) labels: read from a file inside the installed
    package, never downloaded. ``train``: the first 1,500 (True), the other 297 (False), or all (None)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise DatasetError(
            "dataset=digits needs scikit-learn (its images ship inside it): pip install scikit-learn"
        ) from e
    x, y = sklearn_digits(return_X_y=True)
    images = torch.from_numpy(x).reshape(-1, 1, 8, 8).mul(255 / DIGITS_LEVELS).round().to(torch.uint8)
    labels = torch.from_numpy(y).long()
    part = slice(None) if train is None else slice(None, DIGITS_TRAIN) if train else slice(DIGITS_TRAIN, None)
    return images[part].contiguous(), labels[part]


def load_cifar10(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 split from its pickled batches in ``root/cifar-10-batches-py`` via torchvision (md5-checked)."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(Path(root).expanduser()), train=train, download=False)
    except RuntimeError as e:  # "Dataset not found or corrupted": a missing file or a wrong md5
        folder = Path(root).expanduser() / CIFAR10.base_folder
        expected = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        raise missing_files_error(
            "CIFAR-10 (or a file of it with a wrong md5)",
            folder,
            expected,
            f"Set dataset.download=true on a machine with internet, or unpack {CIFAR10.url} into {folder.parent} "
            "and set dataset.download=false",
        ) from e
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


CARS_HOW_TO_GET = (
    "Its public download (ai.stanford.edu) is gone, so dataset.download cannot fetch it: get cars_train.tgz, "
    "cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat from a mirror (e.g. Kaggle, "
    "'stanford-cars-dataset') and unpack them as {root}/stanford_cars/{{cars_train/, cars_test/, devkit/cars_meta.mat, "
    "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}} (torchvision's layout), or put the images in "
    "{root}/cars_train/ and {root}/cars_test/ (optionally one sub-folder per class)"
)


def stanford_cars_class_names(root: str | Path, train: bool) -> list[str] | None:
    """The class names of a Stanford Cars split: ``devkit/cars_meta.mat`` in torchvision's layout, else the
    class sub-folders of ``cars_train/`` (or ``cars_test/``); None when the images have no classes."""
    root = Path(root).expanduser()
    base = root / "stanford_cars"
    split = "cars_train" if train else "cars_test"
    if (base / "devkit").is_dir():
        from torchvision.datasets import StanfordCars

        try:
            return [str(name) for name in StanfordCars(str(root), split="train" if train else "test").classes]
        except (RuntimeError, OSError, ValueError, KeyError):
            stanford_cars_files(root, train)  # raises the missing-files message
            raise
    for folder in (root / split, base / split):
        if folder.is_dir():
            return index_image_folder(folder)[2] or None
    return None


def stanford_cars_files(root: str | Path, train: bool) -> tuple[list[Path], list[int], Path]:
    """Files and labels of one Stanford Cars split, in torchvision's layout or as cars_train/ + cars_test/ folders.

    Returns (files, labels, folder the images are in).
    """
    root = Path(root).expanduser()
    base = root / "stanford_cars"
    split = "cars_train" if train else "cars_test"
    if (base / "devkit").is_dir():
        from torchvision.datasets import StanfordCars

        try:  # a loader that returns the path: torchvision parses the .mat annotations, we decode in bulk
            ds = StanfordCars(str(root), split="train" if train else "test", loader=Path)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            raise missing_files_error(
                "Stanford Cars",
                base,
                [
                    "devkit/cars_meta.mat",
                    "devkit/cars_train_annos.mat",
                    "cars_test_annos_withlabels.mat",
                    "cars_train/",
                    "cars_test/",
                ],
                CARS_HOW_TO_GET.format(root=root),
                e,
            ) from e
        samples = [ds[i] for i in range(len(ds))]
        return [p for p, _ in samples], [int(c) for _, c in samples], base / split
    for folder in (root / split, base / split):
        if folder.is_dir():
            files, labels, _ = index_image_folder(folder)
            return files, labels, folder
    raise missing_files_error(
        "Stanford Cars",
        root,
        [f"stanford_cars/devkit/ + stanford_cars/{split}/", f"{split}/"],
        CARS_HOW_TO_GET.format(root=root),
    )
