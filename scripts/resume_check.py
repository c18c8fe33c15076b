"""Is a resumed run the run never stopped? (issue 23) Three launches of ``python -m ddpm_lab.train``:

  1. straight: the command, start to end;
  2. stopped: the same command, SIGTERM once the progress bar shows step ``--stop-at`` (Lightning finishes the
     running step, saves last.ckpt, exits 143), then ``resume=<its run folder>`` to the end;

and the two ``last.ckpt`` compared tensor by tensor (network, EMA, optimizer moments, every tensor anywhere in the
file), plus the ``train/loss`` points both TensorBoard runs logged. Same machine, same thread count.

  python scripts/resume_check.py                          # the issue's MNIST run (/work/shared/data/mnist-t10k)
  python scripts/resume_check.py --code /path/to/checkout # measure another checkout (e.g. main before the fix)
  python scripts/resume_check.py -- trainer=ddp_sim       # extra overrides for all launches

The default overrides are the issue's experiment: image_folder MNIST 28 px, unet_small, batch 32, 40 steps, cosine
lr, a checkpoint every 10 steps, seed 3. Prints one line per result; exits 1 when the checkpoints differ.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
ISSUE = (
    "dataset=image_folder",
    "dataset.channels=1",
    "dataset.image_size=28",
    "model=unet_small",
    "dataset.batch_size=32",
    "trainer.max_steps=40",
    "lr_schedule=cosine",
    "callbacks.model_checkpoint.every_n_train_steps=10",
    "seed=3",
)
PROGRESS = re.compile(r"(\d+)/\d+ \[")  # tqdm's "17/296 [": batches of the epoch (= steps in the first epoch)


def launch(code: Path, threads: int, args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads))
    return subprocess.Popen(
        [sys.executable, "-m", "ddpm_lab.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen, what: str, expect: int = 0) -> None:
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.wait() != expect:
        raise SystemExit(f"{what} exited {proc.returncode} (expected {expect}):\n{out[-4000:]}")


def stop_at(proc: subprocess.Popen, step: int) -> None:
    """Read the progress bar until it shows ``step``, then SIGTERM; wait for the exit (143)."""
    assert proc.stdout is not None
    seen = b""
    while proc.poll() is None:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        seen = (seen + chunk)[-400:]
        done = [int(m) for m in PROGRESS.findall(seen.decode(errors="replace"))]
        if done and max(done) >= step:
            proc.send_signal(signal.SIGTERM)
            break
    finish(proc, "the stopped run", expect=128 + signal.SIGTERM)


def tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint, by its path of keys."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}/{key}"))
    return found


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise SystemExit(f"the checkpoints hold other tensors: {sorted(a.keys() ^ b.keys())[:10]}")
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            raise SystemExit(f"{key}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
        if x.dtype == torch.uint8 or not (x.is_floating_point() or x.is_complex()):
            worst = max(worst, 0.0 if torch.equal(x, y) else float("inf"))
        elif x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst


def logged_losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose ddpm_lab runs")
    parser.add_argument("--root", default="/work/shared/data/mnist-t10k", help="dataset.root")
    parser.add_argument("--stop-at", type=int, default=17, help="SIGTERM once this step is done")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every launch")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temp folder)")
    parser.add_argument("--compare-only", action="store_true", help="compare the runs already in --work")
    parser.add_argument("overrides", nargs="*", help="extra overrides, after --")
    opts = parser.parse_args()
    work = opts.work or Path(tempfile.mkdtemp(prefix="resume_check_"))
    work.mkdir(parents=True, exist_ok=True)
    common = [
        *ISSUE,
        f"dataset.root={opts.root}",
        f"paths.cache_dir={work / 'cache'}",
        "callbacks.progress_bar.refresh_rate=1",
        *opts.overrides,
    ]
    straight, stopped = work / "straight", work / "stopped"
    if opts.compare_only:  # the three launches are done: compare their checkpoints again
        compare(straight, stopped, -1)
    print(f"code {opts.code}, runs in {work}, {opts.threads} threads", flush=True)
    finish(launch(opts.code, opts.threads, [*common, f"hydra.run.dir={straight}"], work), "the straight run")
    stop_at(launch(opts.code, opts.threads, [*common, f"hydra.run.dir={stopped}"], work), opts.stop_at)
    step = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    finish(launch(opts.code, opts.threads, [f"resume={stopped}"], work), "the resumed run")

    compare(straight, stopped, step)


def compare(straight: Path, stopped: Path, step: int) -> None:
    # ModelCheckpoint's own entries name the files it kept (another folder per run): left out.
    a, b = (
        {k: v for k, v in tensors(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)).items()
         if "ModelCheckpoint" not in k}
        for run in (straight, stopped)
    )  # fmt: skip
    diff = max_difference(a, b)
    if step >= 0:
        print(f"stopped by SIGTERM at step {step}, resumed to the end")
    print(f"last.ckpt: {len(a)} tensors, max abs difference {diff:.3g}")
    la, lb = logged_losses(straight), logged_losses(stopped)
    common_steps = sorted(la.keys() & lb.keys())
    loss_diff = max((abs(la[s] - lb[s]) for s in common_steps), default=float("nan"))
    print(f"train/loss: {len(common_steps)} logged steps in both runs, max abs difference {loss_diff:.3g}")
    sys.exit(0 if diff == 0.0 else 1)


if __name__ == "__main__":
    main()
