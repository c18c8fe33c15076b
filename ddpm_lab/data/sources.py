"""Readers that turn datasets on disk into one uint8 tensor (N, C, H, W) plus integer labels."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DatasetError(RuntimeError):
    """A dataset is missing, empty or unreadable; the message says which files and how to fix it."""


def fit_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Resize the shorter side to ``image_size``, center-crop square and convert to ``channels`` (uint8 in, uint8 out)."""
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
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(
    root: str | Path, image_size: int, channels: int, on_error: str = "skip"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image under ``root`` once. Sub-folders of ``root`` become class labels when present.

    ``on_error``: ``skip`` (warn and leave out unreadable files) or ``raise`` (stop, naming them).
    Returns images (N, C, S, S) uint8, labels (N,) int64 and the class names.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist: set dataset.root to a folder of images")
    files = list_image_files(root)
    if not files:
        raise DatasetError(
            f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): point dataset.root at a folder that does"
        )
    classes = sorted({f.parent.relative_to(root).parts[0] for f in files if f.parent != root})
    class_index = {c: i for i, c in enumerate(classes)}
    mode = "L" if channels == 1 else "RGB"
    images, labels, bad = [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                w, h = im.size
                scale = image_size / min(w, h)
                if scale != 1:  # PIL resize on the decoded image: cheaper than holding full-size tensors
                    im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
                img = TF.pil_to_tensor(im)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            bad.append(f"{f} ({type(e).__name__}: {e})")
            continue
        images.append(TF.center_crop(img, [image_size, image_size]))
        rel = f.parent.relative_to(root).parts
        labels.append(class_index[rel[0]] if rel else -1)
    if bad:
        listing = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        if on_error == "raise" or not images:
            raise DatasetError(
                f"{len(bad)} unreadable image(s) under {root}: {listing}. Remove or fix them, "
                "or set dataset.on_error=skip to leave them out"
            )
        log.warning("skipped %d unreadable image(s) under %s: %s", len(bad), root, listing)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), classes


def load_mnist(root: str | Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's IDX files through torchvision, as (N, 1, 28, 28) uint8."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root), train=train, download=download)
    except RuntimeError as e:
        raise DatasetError(
            f"MNIST not found under {Path(root) / 'MNIST' / 'raw'} ({e}). Expected the IDX files "
            "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), "
            "t10k-labels-idx1-ubyte(.gz): set dataset.download=true on a machine with internet, or copy them there"
        ) from e
    return ds.data.unsqueeze(1).clone(), ds.targets.clone().long()
