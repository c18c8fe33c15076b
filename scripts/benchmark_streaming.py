"""Training images/s from litdata shards (``dataset=streaming``) against the same images in memory (the shared
decoded cache), on the CPU, measured in one process and interleaved, so the ratio survives a busy machine.

    python scripts/benchmark_streaming.py [--data /work/shared/data/cifar10-subset] [--steps 30] [--rounds 3]

Writes shards of the image folder (``python -m ddpm_lab.shards`` in-process) into a temporary folder, then per round
times (a) one pass of each training loader with ``on_after_batch_transfer`` (data images/s) and (b) ``--steps``
training steps through ``ddpm_lab.train.train`` (Lightning, the ``Throughput`` callback's average images/s).
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402 (after the checkout is on sys.path)

from ddpm_lab.config import build, config_dir  # noqa: E402
from ddpm_lab.shards import shards  # noqa: E402
from ddpm_lab.train import train  # noqa: E402

AVERAGE = re.compile(r"throughput: ([0-9.]+) images/s on average")


class Average(logging.Handler):
    """Keeps the Throughput callback's last "images/s on average" line."""

    value: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        found = AVERAGE.search(record.getMessage())
        if found:
            self.value = float(found.group(1))


def data_rate(cfg, seconds: float = 2.0) -> float:
    """Images/s one rank's training loader serves, ``on_after_batch_transfer`` included (whole passes)."""
    dm = build("dataset", cfg.dataset)
    dm.prepare_data()
    dm.setup("fit")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in dm.train_dataloader():
            n += dm.on_after_batch_transfer(batch, 0)[0].shape[0]
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/cifar10-subset"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", default="unet_small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    handler = Average()
    throughput = logging.getLogger("ddpm_lab.training.throughput")
    throughput.addHandler(handler)
    throughput.setLevel(logging.INFO)  # no logging is configured in-process: its INFO line would be dropped
    size = (f"dataset.image_size={args.image_size}", "dataset.channels=3")
    rates: dict[str, dict[str, list[float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ddpm-stream-") as tmp,
        initialize_config_dir(config_dir=config_dir(), version_base="1.3"),
    ):
        cache = f"paths.cache_dir={tmp}/cache"
        folder = ("dataset=image_folder", f"dataset.root={args.data}", *size, "dataset.cache_min_files=0", cache)
        cfg = compose("shards", [*folder, f"out={tmp}/shards"])
        shards(cfg)
        setups = {
            "in memory (dataset=image_folder, shared cache)": folder,
            "streaming (dataset=streaming)": ("dataset=streaming", f"dataset.root={tmp}/shards", *size, cache),
        }
        common = (
            f"model={args.model}",
            "trainer=cpu",
            f"dataset.batch_size={args.batch}",
            f"trainer.max_steps={args.steps}",
            "+trainer.limit_val_batches=0",
            "callbacks.sample_grid=null",
            "callbacks.diffusion_strips=null",
            "callbacks.run_summary=null",
            "callbacks.progress_bar=null",
            "callbacks.model_checkpoint=null",
            "logger=csv",
        )
        for r in range(args.rounds):
            for name, overrides in setups.items():
                cfg = compose("train", [*overrides, *common, f"paths.output_dir={tmp}/run_{r}_{len(rates)}"])
                row = rates.setdefault(name, {"data": [], "train": []})
                row["data"].append(data_rate(cfg))
                handler.value = None
                train(cfg)
                row["train"].append(handler.value or float("nan"))
                print(f"round {r + 1}: {name}: data {row['data'][-1]:.0f} img/s, train {row['train'][-1]:.1f} img/s")
    print(f"\nCPU, {torch.get_num_threads()} threads, {args.model}, batch {args.batch}, {args.steps} steps, median of")
    print(f"{args.rounds} interleaved rounds; {args.data} at {args.image_size} px\n")
    print("| data | data images/s | training images/s |")
    print("|---|---|---|")
    medians = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in rates.items()}
    for name, m in medians.items():
        print(f"| {name} | {m['data']:.0f} | {m['train']:.1f} |")
    (memory, stream) = medians.values()
    ratios = {k: stream[k] / memory[k] for k in ("data", "train")}
    print(f"\nstreaming / in memory: data {ratios['data']:.2f}, training {ratios['train']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
