"""Shards for ``dataset=streaming``: ``python -m ddpm_lab.shards dataset=<option> [dataset.root=...] out=DIR``.

``shards(cfg)`` reads the dataset's split as training would (decoded once, through the shared decoded cache; the
same validation images held out) and writes it with litdata (see :mod:`ddpm_lab.data.shards`); ``main`` is only the
Hydra wrapper.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from ddpm_lab.config import build, config_dir
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.settings import shards_settings
from ddpm_lab.data.shards import ShardInfo, write_shards
from ddpm_lab.errors import user_errors

log = logging.getLogger(__name__)


def shards(cfg: DictConfig) -> str:
    """Check ``cfg``, read the dataset's split and write it as shards; returns where they are."""
    s = shards_settings(cfg)
    datamodule = build("dataset", cfg.dataset)  # its constructor checks dataset.*
    datamodule.prepare_data()
    datamodule.setup("fit")
    train, val = datamodule.train_images, datamodule.val_images
    info = ShardInfo(
        image_size=datamodule.image_size,
        channels=datamodule.channels,
        class_names=datamodule.class_names,
        train=len(train),
        val=len(val),
        source=f"{type(datamodule).__name__} at {datamodule.root}, split={datamodule.split}, seed={datamodule.seed}",
    )
    parts = {"train": (train, datamodule.train_labels), "val": (val, datamodule.val_labels)}
    write_shards(parts, info, s.out, s.chunk_bytes, s.workers)
    log.info(
        "shards of %d train and %d val images in %s: train with dataset=streaming dataset.root=%s",
        len(train),
        len(val),
        s.out,
        s.out,
    )
    return s.out


@entry_point("shards")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="shards", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():  # one line on stderr, exit status 2
        out = shards(cfg)
    print(out)


if __name__ == "__main__":
    main()
