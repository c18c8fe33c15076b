"""Data loading speed against training speed, on the CPU.

    python scripts/benchmark_data.py [--data /work/shared/data] [--batch-size 64] [--train-steps 3]

For MNIST (its real IDX files, copied into a temporary MNIST/raw) and CIFAR-10 (its real PNGs, as an image folder)
it times one pass over the training loader, including ``on_after_batch_transfer`` (uint8 → [−1, 1], flips), and
a few optimizer steps of ``unet_small`` on the same batch size, and prints both rates and loading's share of a step.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ddpm_lab.config import build_components, config_dir
from ddpm_lab.data import ImageDataModule


def data_rate(dm: ImageDataModule, trainer: pl.Trainer, min_seconds: float = 1.0) -> float:
    """Training images per second that the data module serves, transfer hook included (whole epochs)."""
    dm.trainer = trainer
    trainer.training = True  # flips on, as in training
    loader = dm.train_dataloader()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for batch in loader:
            images, _ = dm.on_after_batch_transfer(batch, 0)
            n += images.shape[0]
    return n / (time.perf_counter() - start)


def train_rate(cfg, batch_size: int, steps: int) -> float:
    """Images per second of forward + backward + AdamW step of the configured model (after one warm-up step)."""
    net, diffusion, _ = build_components(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.rand(batch_size, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size) * 2 - 1

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        diffusion.loss(net, x0).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path("/work/shared/data"), help="holds mnist-raw/ and cifar10-subset/"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ddpm_lab_bench_"))
    try:
        raw = tmp / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in (args.data / "mnist-raw").glob("*-ubyte.gz"):
            shutil.copy(f, raw)
        # Only MNIST's test split is available offline, so the benchmark trains on split=test (10k images).
        setups = {
            "mnist": ["dataset=mnist", f"dataset.root={tmp}", "dataset.split=test", "dataset.download=false"],
            "cifar10": [
                "dataset=image_folder",
                f"dataset.root={args.data / 'cifar10-subset'}",
                "dataset.image_size=32",
                "dataset.flip=true",
                "dataset.cache_min_files=null",
                "model.attention_resolutions=[8]",
            ],
        }
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        rows = []
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            for name, overrides in setups.items():
                cfg = compose(
                    "train",
                    overrides=[
                        "model=unet_small",
                        f"dataset.batch_size={args.batch_size}",
                        "dataset.val_size=0",
                        *overrides,
                    ],
                )
                dm: ImageDataModule = instantiate(cfg.dataset)
                start = time.perf_counter()
                dm.prepare_data()
                dm.setup("fit")
                decode_s = time.perf_counter() - start
                data = data_rate(dm, trainer)
                train = train_rate(cfg, args.batch_size, args.train_steps)
                rows.append((name, len(dm.train_images), decode_s, data, train, 100 * train / data))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, model unet_small")
    print(f"{'dataset':8} {'images':>7} {'load s':>7} {'data img/s':>11} {'train img/s':>12} {'data/step':>10}")
    for name, n, decode_s, data, train, share in rows:
        print(f"{name:8} {n:7d} {decode_s:7.2f} {data:11.0f} {train:12.1f} {share:9.3f}%")
    ok = all(share < 5 for *_, share in rows)
    print("loading takes " + ("under" if ok else "MORE than") + " 5% of a training step")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
