"""Speed of ddpm_lab's training and sampling (issue 16); every comparison is a ratio measured in one process.

  --suite cpu (default): (a) the MNIST recipe on the CPU (unet_small, 28x28x1, AdamW, clipping, EMA) for each
      --batches size: ddpm_lab through Lightning (``ddpm_lab.train.train``) vs the same step in a bare PyTorch
      loop vs diffusers' UNet2DModel (32/64/128 channels, one block per level, attention at 7x7) in that loop
      vs diffusers' UNet2DModel with ddpm_lab's own architecture (diffusers_same);
      images/s, images per CPU-second and GFLOP/s (FLOPs counted by ddpm_lab.models.flops), the four loops
      interleaved over --rounds (median). Then (c) sampling images/s per sampler and step count, then the
      framework-cost rows (below). About 7 min.
        OMP_NUM_THREADS=2 python scripts/benchmark.py --threads 2 --output cpu.md
  --suite framework: what Lightning and ddpm_lab's callbacks add to every training step, with a network so small
      that compute is negligible (unet_tiny, 8x8x1, batch 4): ms per step of ``ddpm_lab.train.train`` minus ms per
      step of the bare loop (same net, AdamW, clipping, EMA lerp). Target <= 1 ms on one thread:
        OMP_NUM_THREADS=1 python scripts/benchmark.py --suite framework --threads 1
  --suite fid: a checkpoint's samples in float32 vs bf16 (images/s, FID of each against --real, and between):
        python scripts/benchmark.py --suite fid --device cuda --ckpt RUN/checkpoints/last.ckpt --real DIR --n 1000
  --suite gpu: (b) the training step of unet_ddpm_cifar10 at batch 128 on a CUDA GPU, 32-true / bf16-mixed /
      16-mixed x eager / torch.compile (images/s, MFU, peak memory), and bf16 vs float32 sampling;
      JSON + Markdown into the --output folder. scripts/gpu_check.sh runs it.
        python scripts/benchmark.py --suite gpu --device cuda --model unet_ddpm_cifar10 --image-size 32 --batch 128
            --threads 8 --sample-batch 256 --output gpu_out   (one command line)

Timings mean something only with nothing else running on the machine. Peak memory on the CPU (--memory) is
measured in a fresh subprocess per method.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLER_STEPS = {"ddpm": 100, "ddim": 50, "dpm_solver": 20}  # DDPM respaced to 100 steps: 1000 take too long
# diffusers: the matched-FLOP reference (--diffusers-channels/--diffusers-blocks); diffusers_same: a
# UNet2DModel with ddpm_lab's own widths and blocks per level, i.e. the same architecture in the other library.
TRAIN_METHODS = ("ddpm_lab", "bare", "diffusers", "diffusers_same")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds. On a shared CPU the process's CPU time is the steadier measure."""
    sync(device)
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float], device: torch.device) -> dict[str, float]:
    end = clock(device)
    return {"wall": end[0] - start[0], "cpu": end[1] - start[1]}


# ----------------------------------------------------------------------------------------------- setup
def write_images(root: Path, n: int, size: int, channels: int = 3) -> Path:
    """Random uint8 PNGs: training speed does not depend on what the pictures show."""
    from ddpm_lab.artifacts.images import save_png

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        image = torch.randint(0, 256, (channels, size, size), generator=g, dtype=torch.uint8)
        save_png(image, root / "x" / f"{i:04d}.png")
    return root


def compose_cfg(args: argparse.Namespace, data_root: Path, out_dir: Path, as_users_run: bool = False):
    """The real train config, composed with Hydra's compose API, trimmed to the training loop itself.

    ``as_users_run``: keep the progress bar and the checkpoint callback (the framework-cost suite: they run
    their checks every step); the sample grid and diffusion strips (every 1000 steps) stay off either way."""
    from hydra import compose, initialize_config_dir

    from ddpm_lab.config import config_dir

    trimmed = (
        ["callbacks.diffusion_strips=null"]
        if as_users_run
        else ["+trainer.enable_progress_bar=false", "callbacks.model_checkpoint=null", "callbacks.progress_bar=null"]
    )
    overrides = [
        f"model={args.model}",
        "dataset=image_folder",
        f"dataset.root={data_root}",
        f"dataset.image_size={args.image_size}",
        f"dataset.channels={args.channels}",
        f"dataset.batch_size={args.batch}",
        "dataset.cache_min_files=null",
        "dataset.val_size=0",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.enable_model_summary=false",
        "callbacks.sample_grid=null",
        *trimmed,
        f"paths.output_dir={out_dir}",
        f"paths.output_root={out_dir}",
        *args.override,
    ]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def param_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def diffusers_unet(
    model_cfg: Any,
    image_size: int,
    channels: int,
    layers_per_block: int | None = None,
    widths: list[int] | None = None,
):
    """A diffusers ``UNet2DModel`` with ddpm_lab's attention levels; ``widths`` (default: ddpm_lab's) and
    ``layers_per_block`` (default: the config's ``num_res_blocks``) set its size. The issue's reference for
    unet_small (1.66 GFLOP per training image) is 32/64/128 with one block per level (1.73 GFLOP)."""
    from diffusers import UNet2DModel

    mults = list(model_cfg.channel_mults)
    res = [image_size // 2**i for i in range(len(mults))]
    attn = set(model_cfg.attention_resolutions)
    down = [("AttnDownBlock2D" if r in attn else "DownBlock2D") for r in res]
    up = [("AttnUpBlock2D" if r in attn else "UpBlock2D") for r in reversed(res)]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths or [model_cfg.base_channels * m for m in mults],
        layers_per_block=layers_per_block or model_cfg.num_res_blocks,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=None,
        norm_num_groups=model_cfg.groups,
        dropout=model_cfg.dropout,
    )


def diffusers_net(cfg, args, same_layout: bool):
    """The reference U-Net of ``--diffusers-*`` or, with ``same_layout``, ddpm_lab's architecture in diffusers."""
    if same_layout:
        return diffusers_unet(cfg.model, args.image_size, args.channels)
    return diffusers_unet(cfg.model, args.image_size, args.channels, args.diffusers_blocks, diffusers_widths(args))


# ----------------------------------------------------------------------------------------------- training
class StepTimer(pl.Callback):
    """Wall time of the optimizer steps after ``warmup``, kept on the class so the caller can read it."""

    elapsed: dict[str, float] = {}

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.t0 = warmup, torch.device(device), 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = clock(self.device)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == trainer.max_steps:
            StepTimer.elapsed = since(self.t0, self.device)


def train_ddpm_lab(cfg, args) -> dict[str, float]:
    """ddpm_lab as users run it: ``ddpm_lab.train.train(cfg)`` builds the DiffusionModule and Trainer."""
    from omegaconf import OmegaConf

    from ddpm_lab.train import train

    timer = {"_target_": f"{__name__}.StepTimer", "warmup": args.warmup, "device": args.device}
    OmegaConf.update(cfg, "callbacks.step_timer", timer, force_add=True)
    StepTimer.elapsed = {}
    train(cfg)
    return StepTimer.elapsed


def _autocast(args):
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else None
    return torch.autocast(args.device, dtype=dtype, enabled=dtype is not None)


def bare_loop(
    args, images: torch.Tensor, step_fn: Callable[[torch.Tensor], torch.Tensor], params, optimizer, clip: float
) -> dict[str, float]:
    """Warm-up then timed steps of: random batch -> [-1, 1] -> loss -> backward -> clip -> optimizer step."""
    device = torch.device(args.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ema = [p.detach().clone() for p in params]  # the recipe's EMA, as one foreach update
    g = torch.Generator().manual_seed(0)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = clock(device)
        idx = torch.randint(len(images), (args.batch,), generator=g)
        x0 = images[idx].to(device, non_blocking=True).float().div(127.5).sub(1.0)
        with _autocast(args):
            loss = step_fn(x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - min(0.9999, (2 + i) / (11 + i)))
    return since(t0, device)


def train_bare(cfg, args, images) -> dict[str, float]:
    """The same U-Net, diffusion loss and optimizer, in a plain PyTorch loop."""
    from hydra.utils import instantiate

    from ddpm_lab.config import build_components

    net, diffusion, _ = build_components(cfg)
    net, diffusion = net.to(args.device).train(), diffusion.to(args.device)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    return bare_loop(
        args,
        images,
        lambda x0: diffusion.loss(net, x0),
        list(net.parameters()),
        optimizer,
        float(cfg.trainer.gradient_clip_val),
    )


def train_diffusers(cfg, args, images, same_layout: bool = False) -> dict[str, float]:
    """diffusers' UNet2DModel + DDPMScheduler.add_noise, ε-prediction MSE, same optimizer and clipping;
    ``same_layout``: ddpm_lab's widths and blocks per level instead of the matched-FLOP reference."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from hydra.utils import instantiate

    net = diffusers_net(cfg, args, same_layout)
    net = net.to(args.device).train()
    scheduler = DDPMScheduler(num_train_timesteps=int(cfg.schedule.timesteps), beta_schedule="linear")
    optimizer = instantiate(cfg.optimizer)(net.parameters())

    def step(x0: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return F.mse_loss(net(scheduler.add_noise(x0, noise, t), t).sample.float(), noise)

    return bare_loop(args, images, step, list(net.parameters()), optimizer, float(cfg.trainer.gradient_clip_val))


# ----------------------------------------------------------------------------------------------- framework cost
FRAMEWORK = {"model": "unet_tiny", "image_size": 8, "channels": 1, "batch": 4}  # compute negligible: host work shows


def framework_args(args: argparse.Namespace) -> argparse.Namespace:
    """The issue's setting for the framework's cost per step: unet_tiny, 8x8x1, batch 4, ``--framework-steps``."""
    steps = args.framework_steps
    return argparse.Namespace(**(vars(args) | FRAMEWORK | {"steps": steps, "warmup": 20, "device": "cpu"}))


def framework_cost(args: argparse.Namespace) -> dict[str, Any]:
    """ms per step of ``ddpm_lab.train.train`` (default callbacks, TensorBoard, progress bar, checkpoint callback;
    no sample grid or strips in the window) and of the bare loop (same net, AdamW, clipping, EMA lerp), ``--rounds``
    interleaved; the difference of the medians is what the framework adds to every step."""
    fargs = framework_args(args)
    runs: dict[str, list[dict[str, float]]] = {"ddpm_lab": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_root = write_images(tmp / "data", (fargs.warmup + fargs.steps + 1) * fargs.batch, 8, 1)
        from ddpm_lab.data.datasets.image_folder import load_image_folder

        images = load_image_folder(data_root, fargs.image_size, fargs.channels)[0]
        for r in range(args.rounds):
            for name in runs:
                cfg = compose_cfg(fargs, data_root, tmp / f"f{r}{name}", as_users_run=True)
                seconds = train_ddpm_lab(cfg, fargs) if name == "ddpm_lab" else train_bare(cfg, fargs, images)
                runs[name].append({k: 1000 * v / fargs.steps for k, v in seconds.items()})
                print(f"framework round {r}: {name} {runs[name][-1]} ms/step", file=sys.stderr, flush=True)
    med = {k: {m: statistics.median(r[m] for r in rs) for m in ("wall", "cpu")} for k, rs in runs.items()}
    return {"runs": runs, "median": med, "added": {m: med["ddpm_lab"][m] - med["bare"][m] for m in ("wall", "cpu")}}


def framework_report(args: argparse.Namespace, result: dict[str, Any]) -> str:
    med, added = result["median"], result["added"]
    lines = [
        f"Framework cost per step (unet_tiny, 8x8x1, batch 4, {torch.get_num_threads()} torch thread(s), "
        f"{args.framework_steps} timed steps after 20, {args.rounds} interleaved rounds, median):",
        "",
        "| loop | ms per step (wall) | ms per step (process CPU) | runs (wall ms) |",
        "|---|---|---|---|",
    ]
    for k in ("ddpm_lab", "bare"):
        runs = ", ".join(format(r["wall"], ".2f") for r in result["runs"][k])
        lines.append(f"| {k} | {med[k]['wall']:.2f} | {med[k]['cpu']:.2f} | {runs} |")
    lines += [
        "",
        f"- Framework cost per step (Lightning run minus bare loop): **{added['wall']:.2f} ms** wall, "
        f"{added['cpu']:.2f} ms CPU (target <= 1 ms).",
    ]
    return "\n".join(lines) + "\n"


def framework_suite(args: argparse.Namespace) -> None:
    """``--suite framework``: the framework-cost rows alone (about 1 min on one idle core)."""
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("ddpm_lab").setLevel(logging.WARNING)
    text = f"Machine: {machine(args)}\n\n{framework_report(args, framework_cost(args))}"
    print(text)
    if args.output:
        args.output.write_text(text)


# ----------------------------------------------------------------------------------------------- sampling
def make_named_sampler(name: str, max_steps: int | None = None):
    """(sampler, None) or (None, why it is unavailable) — samplers may not be registered in every checkout.

    ``max_steps`` shortens the chain (memory runs: a step frees the previous one, so peak memory does not grow).
    """
    from ddpm_lab.diffusion.samplers import make_sampler

    steps = min(SAMPLER_STEPS[name], max_steps or SAMPLER_STEPS[name])
    try:
        return make_sampler(name, steps=None if steps == 1000 and name == "ddpm" else steps), None
    except (ValueError, TypeError) as e:
        return None, str(e).splitlines()[0]


@torch.no_grad()
def sample_seconds(cfg, args, name: str) -> dict[str, float]:
    from ddpm_lab.config import build_components
    from ddpm_lab.diffusion.samplers import DDPMSampler

    sampler, why = make_named_sampler(name, max_steps=20 if args.measure else None)
    if sampler is None:
        raise RuntimeError(why)
    net, diffusion, _ = build_components(cfg)
    net, diffusion = net.to(args.device).eval(), diffusion.to(args.device)
    shape = (args.sample_batch, args.channels, args.image_size, args.image_size)
    with _autocast(args):
        diffusion.sample(
            net, shape, sampler=DDPMSampler(steps=2), generator=torch.Generator().manual_seed(0), device=args.device
        )  # warm-up
        t0 = clock(torch.device(args.device))
        diffusion.sample(net, shape, sampler=sampler, generator=torch.Generator().manual_seed(0), device=args.device)
        return since(t0, torch.device(args.device))


# ----------------------------------------------------------------------------------------------- GPU suite
GPU_PRECISIONS = ("bf16-mixed", "32-true", "16-mixed")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def gpu_configs(args) -> list[dict[str, Any]]:
    """The (b) matrix: the cheap eager rows first, then bf16 + compile (the target; run whatever the budget says),
    then the other compiled rows while ``--budget`` lasts. ``--precisions bf16-mixed``: the bf16 rows alone (eager,
    then each of ``--compile-modes``)."""
    precisions = args.precisions.split(",")
    modes = args.compile_modes.split(",")
    configs = [{"precision": p, "compile": "no", "channels_last": True} for p in precisions]
    if precisions != ["bf16-mixed"]:
        configs += [{"precision": "bf16-mixed", "compile": "no", "channels_last": False}]
    configs += [{"precision": "bf16-mixed", "compile": m, "channels_last": True} for m in modes]
    others = [p for p in precisions if p != "bf16-mixed"]
    configs += [{"precision": p, "compile": m, "channels_last": True} for m in modes for p in others]
    return configs


def gpu_train_config(cfg, args, precision: str, compile: str, channels_last: bool) -> dict[str, Any]:
    """images/s, MFU and peak memory of DiffusionModule's training step, without Lightning around it.

    The same work as ``training_step`` + Lightning's optimizer step: uint8 batches sliced on the GPU (as with
    ``dataset.on_device=true``), autocast, ``GaussianDiffusion.loss`` through ``torch.compile(net.forward)``,
    gradient-norm clipping, fused AdamW (and a GradScaler for 16-mixed).
    """
    from hydra.utils import instantiate

    from ddpm_lab.config import build_components
    from ddpm_lab.models.flops import train_flops_per_image
    from ddpm_lab.training.throughput import peak_flops

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    torch._dynamo.reset()
    net, diffusion, _ = build_components(cfg, warn=False)
    net, diffusion = net.to(device).train(), diffusion.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    params = list(net.parameters())
    optimizer = instantiate(cfg.optimizer)(params, fused=True)
    # "reduce-overhead": CUDA graphs replay the compiled forward and backward, one launch instead of hundreds.
    forward = net if compile == "no" else torch.compile(net.forward, mode=compile)
    graphs = compile == "reduce-overhead"
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    dtype = AUTOCAST.get(precision)
    clip = float(cfg.trainer.gradient_clip_val)
    shape = (3, args.image_size, args.image_size)
    images = torch.randint(0, 256, (args.gpu_dataset, *shape), dtype=torch.uint8, device=device)

    def step() -> None:
        if graphs:  # a new iteration: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        idx = torch.randint(len(images), (args.batch,), device=device)
        x0 = images[idx].float().div_(127.5).sub_(1.0)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = diffusion.loss(forward, x0)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    rate = args.steps * args.batch / seconds
    flops = train_flops_per_image(net, shape)
    peak = peak_flops(device, precision)
    return {
        "images_per_s": rate,
        "step_ms": 1000 * seconds / args.steps,
        "mfu": rate * flops / peak if peak else None,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "warmup_s": warmup_s,
        "train_gflop_per_image": flops / 1e9,
    }


@torch.inference_mode()
def gpu_sampling(cfg, args) -> list[dict[str, Any]]:
    """(c) on the GPU: DDIM and DPM-Solver images/s in float32 and under bf16 autocast, from the same noise, with
    the largest pixel difference between the two (random weights: a check of the arithmetic, not of quality)."""
    from ddpm_lab.config import build_components
    from ddpm_lab.diffusion import generate

    torch.manual_seed(0)
    net, diffusion, _ = build_components(cfg, warn=False)
    device = torch.device(args.device)
    for p in net.parameters():  # the zero-initialised output layers would make every sample identical
        if not p.any():
            p.normal_(0.0, 0.02)
    net, diffusion = net.to(device).eval().to(memory_format=torch.channels_last), diffusion.to(device)
    rows = []
    for name in ("ddim", "dpm_solver"):
        sampler, why = make_named_sampler(name)
        if sampler is None:
            rows.append({"sampler": name, "error": why})
            continue
        out = {}
        for precision in ("32-true", "bf16-mixed"):
            dtype = AUTOCAST.get(precision)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                generate(net, diffusion, 8, sampler=sampler, batch_size=8, seed=0)  # warm-up
                sync(device)
                start = time.perf_counter()
                images = generate(net, diffusion, args.sample_batch, sampler=sampler, batch_size=args.sample_batch)
                seconds = time.perf_counter() - start
            out[precision] = images
            rows.append(
                {
                    "sampler": name,
                    "steps": SAMPLER_STEPS[name],
                    "precision": precision,
                    "batch": args.sample_batch,
                    "images_per_s": args.sample_batch / seconds,
                }
            )
        diff = (out["bf16-mixed"] - out["32-true"]).abs()
        rows[-1] |= {"max_abs_diff_vs_fp32": float(diff.max()), "mean_abs_diff_vs_fp32": float(diff.mean())}
    return rows


def gpu_report(args, results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}",
        "",
        f"Training step of `{args.model}` at batch {args.batch}, {args.image_size}x{args.image_size} RGB: "
        f"{args.steps} timed steps after {args.warmup} warm-up steps (which include compilation); "
        f"{results.get('train_gflop_per_image', 0):.2f} GFLOP per training image (3 x forward). MFU: against the "
        "card's dense peak for the precision (bf16/fp16 tensor cores; TF32 for 32-true, as cuDNN convolutions "
        "use it by default).",
        "",
        "| precision | torch.compile mode | channels_last | images/s | step (ms) | MFU | peak memory (MiB) "
        "| warm-up (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["train"]:
        yes = {True: "yes", False: "no"}
        head = f"| {row['precision']} | {row['compile']} | {yes[row['channels_last']]}"
        if "error" in row:
            lines.append(f"{head} | {row['error']} | | | | |")
            continue
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        mem = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        lines.append(
            f"{head} | {row['images_per_s']:.0f} | {row['step_ms']:.2f} | {mfu} | {mem} | {row['warmup_s']:.0f} |"
        )
    if results.get("sampling"):
        lines += [
            "",
            f"Sampling (random weights, batch {args.sample_batch}, torch.inference_mode, eager):",
            "",
            "| sampler | steps | precision | images/s | pixel difference vs float32 (mean / max, range [-1, 1]) |",
            "|---|---|---|---|---|",
        ]
        for row in results["sampling"]:
            if "error" in row:
                lines.append(f"| {row['sampler']} | | | unavailable: {row['error']} | |")
                continue
            diff = (
                f"{row['mean_abs_diff_vs_fp32']:.4f} / {row['max_abs_diff_vs_fp32']:.3f}"
                if "max_abs_diff_vs_fp32" in row
                else ""
            )
            lines.append(
                f"| {row['sampler']} | {row['steps']} | {row['precision']} | {row['images_per_s']:.1f} | {diff} |"
            )
    return "\n".join(lines) + "\n"


def gpu_suite(args) -> None:
    """(b) + GPU sampling: every configuration in this process, within ``--budget`` seconds; results are written
    after each one, so a timeout still leaves what was measured."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--suite gpu --device cuda needs a CUDA GPU (torch.cuda.is_available() is False)")
    from hydra import compose, initialize_config_dir

    from ddpm_lab.config import config_dir

    overrides = [f"model={args.model}", "dataset=cifar10", f"dataset.image_size={args.image_size}", *args.override]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    deadline = time.monotonic() + args.budget
    results: dict[str, Any] = {"machine": machine(args), "settings": vars(args) | {"output": str(args.output)}}
    results["train"] = []
    out = args.output or Path("gpu_benchmark")
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (out / "gpu_benchmark.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_benchmark.md").write_text(gpu_report(args, results))

    for config in gpu_configs(args):
        row = dict(config)
        must = config["compile"] == "default" and config["precision"] == "bf16-mixed"
        if config["compile"] != "no" and args.eager_only:
            row["error"] = "skipped: --eager-only"
        elif time.monotonic() > deadline and not must:
            row["error"] = "skipped: --budget spent"
        else:
            try:
                row |= gpu_train_config(cfg, args, **config)
                results["train_gflop_per_image"] = row["train_gflop_per_image"]
            except Exception as e:  # one failing configuration must not lose the others
                row["error"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results["train"].append(row)
        print(f"gpu: {row}", file=sys.stderr, flush=True)
        save()
    if args.sample_batch and time.monotonic() < deadline:
        try:
            results["sampling"] = gpu_sampling(cfg, args)
        except Exception as e:
            results["sampling"] = [{"sampler": "all", "error": f"{type(e).__name__}: {e}"[:200]}]
        save()
    print(gpu_report(args, results))


# ----------------------------------------------------------------------------------------------- sampling FID
@torch.inference_mode()
def fid_suite(args) -> None:
    """``--suite fid``: a trained checkpoint's samples in float32 and under bf16 autocast (``torch.inference_mode``,
    the same seed, so the same x_T and sampler noise): images/s of each, the FID of each against the real images
    of ``--real``, and the FID between the two sample sets. Inception features when its weights are in torch's hub
    cache, else ``TinyFeatures`` (a fixed random CNN: FIDs comparable with each other only)."""
    from ddpm_lab.artifacts.images import to_uint8
    from ddpm_lab.artifacts.trained_model import load_model
    from ddpm_lab.data.datasets.image_folder import load_image_folder
    from ddpm_lab.diffusion import generate
    from ddpm_lab.metrics import InceptionFeatures, TinyFeatures, chunks, default_inception_path, extract_features
    from ddpm_lab.metrics import scores as fid_scores

    if args.ckpt is None or args.real is None:
        raise SystemExit("--suite fid needs --ckpt (a training checkpoint) and --real (an image folder)")
    device = torch.device(args.device)
    net, diffusion, _ = load_model(args.ckpt, device=device)
    channels, size = int(net.in_channels), int(net.image_size)
    sampler, why = make_named_sampler(args.fid_sampler)
    if sampler is None:
        raise SystemExit(why)
    extractor = InceptionFeatures() if default_inception_path().is_file() else TinyFeatures()
    real = load_image_folder(args.real, size, channels)[0]
    real_features = extract_features(extractor, chunks(real, 250), device)
    rows, features = [], {}
    for precision in ("32-true", "bf16-mixed"):
        dtype = AUTOCAST.get(precision)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            generate(net, diffusion, 2, sampler=sampler, batch_size=2, seed=0, device=device)  # warm-up
            sync(device)
            start = time.perf_counter()
            images = generate(
                net, diffusion, args.n, sampler=sampler, batch_size=args.sample_batch, seed=0, device=device
            )
            seconds = time.perf_counter() - start
        features[precision] = extract_features(extractor, chunks(to_uint8(images), 250), device)
        fid = fid_scores(real_features, features[precision], kid_subset_size=min(1000, args.n))["fid"]
        rows.append({"precision": precision, "images_per_s": args.n / seconds, "fid": fid})
    between = fid_scores(features["32-true"], features["bf16-mixed"], kid_subset_size=min(1000, args.n))["fid"]
    lines = [
        f"Sampling `{args.ckpt}` ({args.fid_sampler}-{SAMPLER_STEPS[args.fid_sampler]}, n={args.n}, batch "
        f"{args.sample_batch}, seed 0, torch.inference_mode) against {len(real)} real images of `{args.real}`, "
        f"features {extractor.name}:",
        "",
        "| precision | images/s | FID vs real |",
        "|---|---|---|",
        *(f"| {r['precision']} | {r['images_per_s']:.1f} | {r['fid']:.2f} |" for r in rows),
        "",
        f"- FID difference bf16 - float32: **{rows[1]['fid'] - rows[0]['fid']:+.2f}**; FID between the two sample "
        f"sets (same noise): {max(between, 0.0):.2f}; bf16 images/s "
        f"{rows[1]['images_per_s'] / rows[0]['images_per_s']:.2f}x.",
    ]
    text = f"Machine: {machine(args)}\n\n" + "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "sampling_fid.md").write_text(text)
        (args.output / "sampling_fid.json").write_text(json.dumps({"rows": rows, "fid_between": between}, indent=1))


# ----------------------------------------------------------------------------------------------- memory
def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure_peak(device: str, run: Callable[[], Any]) -> dict[str, float]:
    """Peak memory of ``run``: CUDA max allocated, or on CPU the peak RSS above the RSS before it.

    Imports are done before the peak is reset (``/proc/self/clear_refs``), so their transient peak,
    the same for every method, does not hide the difference the training loop or sampler makes.
    """
    import diffusers  # noqa: F401  (every method pays the same imports)

    import ddpm_lab.train  # noqa: F401

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    before = status_mib("VmRSS")
    run()
    peak = status_mib("VmHWM")
    return {"peak_mib": peak - before, "rss_before_mib": before}


def run_one(args, measure: str, data_root: Path, out_dir: Path) -> dict[str, Any]:
    """One measurement (in this process): ``train:<method>`` or ``sample:<sampler>``."""
    kind, name = measure.split(":")
    cfg = compose_cfg(args, data_root, out_dir)
    if kind == "sample":
        seconds, n = sample_seconds(cfg, args, name), args.sample_batch
    elif name == "ddpm_lab":
        seconds, n = train_ddpm_lab(cfg, args), args.steps * args.batch
    else:
        from ddpm_lab.data.datasets.image_folder import load_image_folder

        images = load_image_folder(data_root, args.image_size, args.channels)[0]
        seconds = (
            train_bare(cfg, args, images) if name == "bare" else train_diffusers(cfg, args, images, name != "diffusers")
        )
        n = args.steps * args.batch
    return {"seconds": seconds["wall"], "images_per_s": n / seconds["wall"], "images_per_cpu_s": n / seconds["cpu"]}


def memory_in_subprocess(args, measure: str, data_root: Path, out_dir: Path) -> float | None:
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        measure,
        "--data-root",
        str(data_root),
        "--out-dir",
        str(out_dir / measure.replace(":", "_")),
    ]
    keys = ("device", "model", "image_size", "channels", "batch", "precision", "threads", "sample_batch")
    for key in (*keys, "diffusers_blocks", "diffusers_channels"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--steps", str(max(2, args.steps // 4)), "--warmup", "1"] + [f"--override={o}" for o in args.override]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"memory of {measure} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    memory_in_subprocess.rss_before = result.get("rss_before_mib")
    return result["peak_mib"]


# ----------------------------------------------------------------------------------------------- report
def machine(args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads of {__import__('os').cpu_count()} cores{gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def train_flops(cfg, args) -> dict[str, float]:
    """Training FLOPs per image (3 x forward, FlopCounterMode) of ddpm_lab's U-Net and of the diffusers one."""
    from ddpm_lab.config import build_components
    from ddpm_lab.models.flops import train_flops_per_image

    shape = (args.channels, args.image_size, args.image_size)
    ours = train_flops_per_image(build_components(cfg, warn=False)[0], shape)

    class Sample(torch.nn.Module):  # diffusers returns an output object; the counter needs the tensor
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(x, t).sample

    theirs = {
        k: train_flops_per_image(Sample(diffusers_net(cfg, args, k != "diffusers")), shape) for k in TRAIN_METHODS[2:]
    }
    return {"ddpm_lab": ours, "bare": ours, **theirs}


def report(args, train: dict, flops: dict, sampling: dict, memory: dict) -> str:
    """Markdown: per batch size, the three loops' medians and the two target ratios; then sampling."""
    lines = []
    for batch, runs in train.items():
        med = {k: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for k, rs in runs.items()}
        lines += [
            f"Batch {batch}:",
            "",
            "| training loop | GFLOP per image | images/s (wall, median) | images per CPU-second | GFLOP/s (wall) "
            "| runs (images/s) | peak memory (MiB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in TRAIN_METHODS:
            mem = memory.get(f"train:{k}:{batch}")
            lines.append(
                f"| {k} | {flops[k] / 1e9:.3f} | {med[k]['images_per_s']:.1f} | {med[k]['images_per_cpu_s']:.1f} "
                f"| {med[k]['images_per_s'] * flops[k] / 1e9:.1f} "
                f"| {', '.join(format(r['images_per_s'], '.1f') for r in runs[k])} "
                f"| {'n/a' if mem is None else f'{mem:.0f}'} |"
            )
        per_flop = (med["bare"]["images_per_s"] * flops["bare"]) / (
            med["diffusers"]["images_per_s"] * flops["diffusers"]
        )
        same = med["bare"]["images_per_s"] / med["diffusers_same"]["images_per_s"]
        lines += [
            "",
            f"- ddpm_lab's U-Net vs diffusers' per FLOP (bare loops, wall): **{per_flop:.3f}x** (target >= 1.00).",
            f"- ddpm_lab's U-Net vs the same architecture in diffusers (images/s, bare loops, wall): **{same:.3f}x**.",
            f"- Lightning run vs the bare loop (images/s, wall): "
            f"**{med['ddpm_lab']['images_per_s'] / med['bare']['images_per_s']:.3f}x** (target >= 0.97); "
            f"per CPU-second {med['ddpm_lab']['images_per_cpu_s'] / med['bare']['images_per_cpu_s']:.3f}x.",
            "",
        ]
    lines += (
        []
        if not sampling
        else [
            f"Sampling (`GaussianDiffusion.sample`, batch {args.sample_batch}, random weights, eager, float32):",
            "",
            "| sampler | steps | images/s (wall) | images per CPU-second | seconds per batch | peak memory (MiB) |",
            "|---|---|---|---|---|---|",
        ]
    )
    for name, res in sampling.items():
        mem = memory.get(f"sample:{name}")
        if isinstance(res, str):
            lines.append(f"| {name} | {SAMPLER_STEPS[name]} | unavailable: {res} | | | |")
        else:
            lines.append(
                f"| {name} | {SAMPLER_STEPS[name]} | {res['images_per_s']:.2f} | {res['images_per_cpu_s']:.2f} | "
                f"{res['seconds']:.2f} | {'n/a' if mem is None else f'{mem:.0f}'} |"
            )
    if memory:
        lines += [
            "",
            "Peak memory: peak RSS above the RSS after imports, in a fresh process per row "
            f"(imports: {getattr(memory_in_subprocess, 'rss_before', None) or 0:.0f} MiB).",
        ]
    return "\n".join(lines)


def cpu_suite(args) -> None:
    """(a) + (c): see the module docstring."""
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("ddpm_lab").setLevel(logging.WARNING)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # One epoch covers every step: epoch boundaries (rare in real training) stay out of the comparison.
        most = max((args.warmup + steps_for(args, b) + 1) * b for b in batches)
        data_root = write_images(tmp / "data", most, args.image_size, args.channels)
        train: dict[int, dict[str, list[dict[str, float]]]] = {}
        memory: dict[str, float | None] = {}
        for batch in batches:
            args.batch, args.steps = batch, steps_for(args, batch)
            cfg = compose_cfg(args, data_root, tmp / "run")
            flops = train_flops(cfg, args)
            train[batch] = {k: [] for k in TRAIN_METHODS}
            for r in range(args.rounds):
                for k in TRAIN_METHODS:
                    train[batch][k].append(run_one(args, f"train:{k}", data_root, tmp / f"run{batch}_{r}{k}"))
                    print(f"batch {batch} round {r}: {k} {train[batch][k][-1]}", file=sys.stderr, flush=True)
            if args.memory:
                for k in TRAIN_METHODS:
                    memory[f"train:{k}:{batch}"] = memory_in_subprocess(args, f"train:{k}", data_root, tmp)
        sampling: dict[str, Any] = {}
        for name in SAMPLER_STEPS if args.sample_batch else ():
            try:
                sampling[name] = run_one(args, f"sample:{name}", data_root, tmp / f"s_{name}")
            except RuntimeError as e:
                sampling[name] = str(e)
            print(f"sampling {name}: {sampling[name]}", file=sys.stderr, flush=True)
            if args.memory and not isinstance(sampling[name], str):
                memory[f"sample:{name}"] = memory_in_subprocess(args, f"sample:{name}", data_root, tmp)
    settings = (
        f"model={args.model} {' '.join(args.override)}, {args.image_size}x{args.image_size}x{args.channels}, "
        f"diffusers {args.diffusers_channels} with {args.diffusers_blocks} block(s) per level, batches {args.batches}, "
        f"{args.images} timed images per run after {args.warmup} warm-up steps, {args.rounds} interleaved rounds, "
        f"{torch.get_num_threads()} torch threads, precision {args.precision}, sampling batch {args.sample_batch}"
    )
    text = f"Machine: {machine(args)}\n\nSettings: {settings}\n\n{report(args, train, flops, sampling, memory)}\n"
    if args.framework_steps:  # the setting is one thread
        torch.set_num_threads(1)
        text += "\n" + framework_report(args, framework_cost(args))
        torch.set_num_threads(args.threads)
    print(text)
    if args.output:
        args.output.write_text(text)


def diffusers_widths(args) -> list[int] | None:
    """``--diffusers-channels`` as a list, or None for ddpm_lab's own widths (``same``)."""
    return None if args.diffusers_channels == "same" else [int(c) for c in args.diffusers_channels.split(",")]


def steps_for(args, batch: int) -> int:
    """Timed steps of one run: ``--images`` images, at least 2 steps."""
    return max(2, round(args.images / batch))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite", default="cpu", choices=("cpu", "gpu", "framework", "fid"), help="what to measure (see above)"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="gpu suite: cuda (cpu: a smoke test)")
    p.add_argument("--model", default="unet_small", help="a configs/model option")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1, help="image channels (cpu suite; the gpu suite uses 3)")
    p.add_argument("--batches", default="32,128", help="cpu: comma-separated batch sizes, each measured in turn")
    p.add_argument("--images", type=int, default=384, help="cpu: timed images per run (steps = images / batch)")
    p.add_argument("--diffusers-blocks", type=int, default=1, help="cpu: diffusers' blocks per level")
    p.add_argument(
        "--diffusers-channels",
        default="32,64,128",
        help="cpu: diffusers' widths per level (with 1 block: unet_small's FLOPs within 5%%); same: ddpm_lab's",
    )
    p.add_argument("--batch", type=int, default=128, help="gpu: batch size")
    p.add_argument("--steps", type=int, default=50, help="gpu: timed optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (gpu: include compilation)")
    p.add_argument("--rounds", type=int, default=3, help="cpu: interleaved repetitions of each training loop")
    p.add_argument("--threads", type=int, default=2, help="torch threads (also set OMP_NUM_THREADS to the same)")
    p.add_argument("--precision", default="32-true", help="cpu: Lightning precision (32-true | bf16-mixed)")
    p.add_argument("--sample-batch", type=int, default=32, help="images per sampling batch (0: no sampling)")
    p.add_argument(
        "--framework-steps",
        type=int,
        default=500,
        help="cpu/framework: timed steps of the framework-cost rows (unet_tiny, 8 px, batch 4); 0: skip them",
    )
    p.add_argument("--memory", action="store_true", help="cpu: also peak memory, in a subprocess per row (slower)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra train-config override, e.g. model.attention_resolutions=[8]",
    )
    p.add_argument("--output", type=Path, default=None, help="cpu: a Markdown file; gpu: a folder")
    p.add_argument("--budget", type=float, default=240, help="gpu: seconds after which the remaining rows are skipped")
    p.add_argument("--gpu-dataset", type=int, default=50_000, help="gpu: random uint8 images kept on the GPU")
    p.add_argument("--precisions", default=",".join(GPU_PRECISIONS), help="gpu: comma-separated precisions")
    p.add_argument("--compile-modes", default="default", help="gpu: torch.compile modes, e.g. default,reduce-overhead")
    p.add_argument("--eager-only", action="store_true", help="gpu: skip the torch.compile rows (smoke tests)")
    p.add_argument("--ckpt", type=Path, default=None, help="fid: a training checkpoint (last.ckpt)")
    p.add_argument("--real", type=Path, default=None, help="fid: an image folder of real images")
    p.add_argument("--n", type=int, default=1000, help="fid: samples per precision")
    p.add_argument("--fid-sampler", default="ddim", choices=tuple(SAMPLER_STEPS), help="fid: the sampler")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data-root", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.suite == "gpu":
        gpu_suite(args)
        return
    if args.suite == "fid":
        fid_suite(args)
        return
    if args.suite == "framework":
        framework_suite(args)
        return
    if args.measure:  # a memory subprocess: one measurement, one JSON line
        print(json.dumps(measure_peak(args.device, lambda: run_one(args, args.measure, args.data_root, args.out_dir))))
        return
    cpu_suite(args)


if __name__ == "__main__":
    main()
