"""Does EDM's c_noise = ln(σ)/4 need scaling before the U-Net's sinusoidal time embedding?

Trains the same small U-Net with EDM's loss for STEPS steps on the MNIST test digits, feeding the network
scale·c_noise, and prints the held-out EDM loss (fixed images and noise) at several σ and under the training σ
distribution. Run it once per scale, alone on the machine or side by side (losses, not times, are compared):

    python scripts/edm_time_input.py 1 600      # EDM's (and diffusers') input: ln(σ)/4
    python scripts/edm_time_input.py 250 600    # about the range of DDPM's integer t

Data: a folder of 28×28 grayscale PNGs in <digit>/ sub-folders (default /work/shared/data/mnist-t10k; --root).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lab import EDMDiffusion, UNet, make_betas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scale", type=float, help="the network is fed scale·ln(σ)/4")
    parser.add_argument("steps", type=int)
    parser.add_argument("--root", type=Path, default=Path("/work/shared/data/mnist-t10k"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(args.root.glob("*/*.png"))
    np.random.default_rng(0).shuffle(files)
    images = torch.tensor(np.stack([np.asarray(Image.open(f)) for f in files[:5512]]), dtype=torch.float32)
    images = images[:, None] / 127.5 - 1
    train, val = images[:5000], images[5000:]
    torch.manual_seed(0)
    net = UNet(
        in_channels=1,
        image_size=28,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        groups=8,
    )
    edm = EDMDiffusion(make_betas("karras"))

    def model(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return net(x, args.scale * c_noise)

    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    start = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50)  # linear warm-up over 50 steps
        loss = edm.loss(model, train[torch.randint(0, len(train), (32,), generator=g)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    net.eval()
    noise = torch.randn(val.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        per_sigma = {
            s: edm.loss(model, val, t=torch.full((len(val),), s), noise=noise).item()
            for s in (0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)
        }
        sigmas = edm.sample_timesteps(len(val), "cpu", torch.Generator().manual_seed(3))
        overall = edm.loss(model, val, t=sigmas, noise=noise).item()
    print(
        f"scale {args.scale:g}, {args.steps} steps: held-out loss by σ", {k: round(v, 4) for k, v in per_sigma.items()}
    )
    print(f"held-out loss, log-normal σ: {overall:.4f}")


if __name__ == "__main__":
    main()
