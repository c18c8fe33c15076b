"""Sample one checkpoint with several samplers from the same x_T; time each and save one comparison figure.

    python scripts/compare_samplers.py outputs/train/<run>/checkpoints/last.ckpt --n 36 --out samplers.png

Default line-up: ddpm 1000 steps, ddim 50 and 20, dpm_solver 20 and 10 (each with the sampler's defaults).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddpm_lab.artifacts.figures import save_figure, strip_figure
from ddpm_lab.artifacts.images import image_grid
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.diffusion import randn
from ddpm_lab.diffusion.samplers import make_sampler

LINE_UP = [("ddpm", None), ("ddim", 50), ("ddim", 20), ("dpm_solver", 20), ("dpm_solver", 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--n", type=int, default=36, help="images per sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("samplers.png"))
    parser.add_argument(
        "--samplers",
        default=",".join(f"{n}:{s or 'all'}" for n, s in LINE_UP),
        help="name:steps,... (steps 'all' = every timestep)",
    )
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: pass another --out")

    model = load_model(args.ckpt)
    net, diffusion = model.net, model.diffusion
    x_T = randn(
        (args.n, net.in_channels, net.image_size, net.image_size), torch.Generator().manual_seed(args.seed), "cpu"
    )
    grids, titles = [], []
    print(
        f"{'sampler':<12} {'steps':>5} {'seconds':>8} {'images/s':>9}   "
        f"({args.n} images, {torch.get_num_threads()} threads)"
    )
    line_up = [(n, None if s == "all" else int(s)) for n, s in (item.split(":") for item in args.samplers.split(","))]
    for name, steps in line_up:
        sampler = make_sampler(name, steps=steps)
        start = time.perf_counter()
        x = diffusion.sample(net, x_T=x_T, sampler=sampler, generator=torch.Generator().manual_seed(args.seed + 1))
        seconds = time.perf_counter() - start
        n_steps = len(sampler.timesteps(diffusion.num_timesteps))
        print(f"{name:<12} {n_steps:>5} {seconds:>8.1f} {args.n / seconds:>9.2f}")
        grids.append(image_grid(x).float().div(127.5).sub(1.0).unsqueeze(0))
        titles.append(f"{name} {n_steps}\n{seconds:.0f} s")
    save_figure(strip_figure(grids, titles, suptitle=str(args.ckpt.name), cell=2.4), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
