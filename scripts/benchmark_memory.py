"""Host memory per rank of training: peak RSS, and how much of it is the process's own (anonymous) memory versus
pages of files it maps (shared with the other ranks through the page cache), and PSS (shared pages split between
the processes that map them). Polls every rank of ``python -m ddpm_lab.train`` from /proc (Linux).

    python scripts/benchmark_memory.py [--code CHECKOUT] [--data /work/shared/data/cifar10-subset] [--image-size 32]

Runs, for one process (``trainer=cpu``) and two (``trainer=ddp_sim``): the decoded cache off
(``dataset.cache_min_files=null``: every process decodes into its own memory), then on with a fresh cache folder
(the first process decodes, the others wait and map the file), then on again (every process maps the file the run
before wrote). ``--code``: the checkout whose ddpm_lab runs (default: this one); point it at an export of another
commit to compare (``git archive main | tar -x -C /tmp/main``). Every run trains ``--steps`` steps of unet_tiny.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("VmHWM", "RssAnon", "RssFile")


def status(pid: int) -> dict[str, int]:
    """kB values of /proc/<pid>/status and Pss of /proc/<pid>/smaps_rollup; {} once the process is gone."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in FIELDS:
                values[name] = int(rest.split()[0])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                values["Pss"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    return values


def ranks(root: int) -> list[int]:
    """``root`` and its descendants that run ddpm_lab.train (Lightning re-runs the command line for rank 1)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int(Path(proc, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            if b"ddpm_lab.train" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
        todo += children.get(pid, [])
    return sorted(found)


def run(
    code: Path,
    data: Path,
    cache: Path | None,
    out: Path,
    steps: int,
    size: int,
    batch: int,
    trainer: str,
    extra: list[str],
) -> dict[int, dict[str, int]]:
    """Train once; the peak of each field per rank, by rank order (pid order: rank 0 starts first)."""
    command = [
        sys.executable,
        "-m",
        "ddpm_lab.train",
        "debug=default",
        f"trainer={trainer}",
        "dataset=image_folder",
        f"dataset.root={data}",
        f"dataset.image_size={size}",
        "dataset.channels=3",
        f"dataset.batch_size={batch}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "callbacks.sample_grid=null",
        "callbacks.progress_bar=null",
        "callbacks.diffusion_strips=null",
        "callbacks.run_summary=null",
        "callbacks.model_checkpoint=null",
        f"paths.output_root={out}",
        f"paths.cache_dir={out / 'unused' if cache is None else cache}",
        f"dataset.cache_min_files={'null' if cache is None else 0}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, dict[str, int]] = {}
    while proc.poll() is None:
        for pid in ranks(proc.pid):
            now = status(pid)
            peak = peaks.setdefault(pid, {})
            for key, value in now.items():
                peak[key] = max(peak.get(key, 0), value)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"training exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
    seen = sorted(pid for pid, peak in peaks.items() if peak)  # not a process that was gone before it was read
    return {rank: peaks[pid] for rank, pid in enumerate(seen)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout (or export) whose ddpm_lab runs")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/cifar10-subset"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32, help="decoded size (128: 16x the bytes of 32 px)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (small: activations hide the data)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("overrides", nargs="*", help="more training overrides")
    args = parser.parse_args(argv)
    print(f"code: {args.code}\ndata: {args.data} at {args.image_size} px, batch {args.batch}, {args.steps} steps\n")
    columns = ("processes", "decoded cache", "rank", *(f"peak {k} (MB)" for k in ("RSS", "anonymous", "file", "PSS")))
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for processes in args.processes:
        trainer = "cpu" if processes == 1 else "ddp_sim"
        with tempfile.TemporaryDirectory(prefix="ddpm-mem-") as tmp:
            cache = Path(tmp) / "cache"
            for i, (label, folder) in enumerate(
                (("off", None), ("on, decodes", cache), ("on, already decoded", cache))
            ):
                out = Path(tmp) / f"run{i}"
                out.mkdir()
                peaks = run(
                    args.code, args.data, folder, out, args.steps, args.image_size, args.batch, trainer, args.overrides
                )
                for rank, peak in peaks.items():
                    cells = " | ".join(f"{peak.get(k, 0) / 1024:.0f}" for k in (*FIELDS, "Pss"))
                    print(f"| {processes} | {label} | {rank} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
