"""``evaluate devices=2`` against ``devices=1`` on this machine's CPUs: wall time of the whole command (start-up
included) and whether the scores agree bit for bit.

    python scripts/benchmark_devices.py --data /work/shared/data/cifar10-subset --n 400 --rounds 2

An untrained ``model`` U-Net at the data's ``--size`` is written once (sampling costs the same whatever the
weights); each round runs devices=1 then devices=2, interleaved, each into a fresh folder with a fresh real-feature
cache (both extract the real features: evaluate shares that out too). OMP_NUM_THREADS is left unset, so one process
uses every core and two use half each (Lightning Fabric's default): the same machine, split two ways. Prints a
Markdown table; nothing is written outside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from ddpm_lab.artifacts.checkpoint import weights_checkpoint
from ddpm_lab.config import config_dir, stored_config
from ddpm_lab.models import UNet

REPO = Path(__file__).resolve().parents[1]


def untrained_checkpoint(path: Path, data: Path, size: int, model: str) -> Path:
    overrides = [f"model={model}", "dataset=image_folder", f"dataset.root={data}", f"dataset.image_size={size}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        config = stored_config(compose("train", overrides=overrides))
    net = UNet(**{k: v for k, v in config["model"].items() if k != "_target_"})
    torch.save(weights_checkpoint(config, net.state_dict()), path)
    return path


def run(args: argparse.Namespace, ckpt: Path, devices: int, folder: Path) -> tuple[float, dict]:
    command = [
        sys.executable,
        "-m",
        "ddpm_lab.evaluate",
        f"ckpt={ckpt}",
        f"n={args.n}",
        f"batch_size={args.batch_size}",
        f"devices={devices}",
        "device=cpu",
        "features=tiny",
        "sampler=ddim",
        f"sampler.steps={args.steps}",
        "dataset=image_folder",
        f"dataset.root={args.data}",
        f"dataset.image_size={args.size}",
        f"n_real={args.n_real}",
        f"paths.cache_dir={folder / 'cache'}",
        f"hydra.run.dir={folder / 'run'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"devices={devices} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads((folder / "run" / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an image folder (e.g. cifar10-subset)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--model", default="unet_small")
    parser.add_argument("--n", type=int, default=400, help="generated images")
    parser.add_argument("--n-real", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ddpm_lab-devices-"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = untrained_checkpoint(out / "untrained.ckpt", args.data, args.size, args.model)
    times: dict[int, list[float]] = {1: [], 2: []}
    results: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.rounds):
        for devices in (1, 2):
            seconds, result = run(args, ckpt, devices, out / f"round{r}_devices{devices}")
            times[devices].append(seconds)
            results[devices].append(result)
            print(f"round {r}: devices={devices} {seconds:.1f} s, FID {result['fid']!r}", file=sys.stderr)
    keys = ("fid", "fid_std", "kid_mean", "kid_std", "floor")
    same = all(a[k] == b[k] for a in results[1] for b in results[2] for k in keys)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"evaluate n={args.n} (DDIM-{args.steps}, {args.model} at {args.size} px, batch {args.batch_size}), ")
    print(f"{args.n_real} real images, features=tiny, {os.cpu_count()} CPU cores, median of {args.rounds} rounds\n")
    print("| devices | wall s (whole command) | speed-up | FID |")
    print("|---|---|---|---|")
    print(f"| 1 | {one:.1f} | 1.00 | {results[1][0]['fid']:.6f} |")
    print(f"| 2 | {two:.1f} | {one / two:.2f} | {results[2][0]['fid']:.6f} |")
    print(f"\nscores identical across devices (FID, its spread, KID, floor): {same}")


if __name__ == "__main__":
    main()
