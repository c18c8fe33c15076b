"""scripts/gpu_check.sh (issue 26) is ready for a GPU session: valid bash, a one-line refusal, and its
``--cpu-smoke`` run of all five parts; scripts/benchmark.py's GPU matrix and framework-cost rows."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.images import save_png
from helpers import REPO_ROOT, cli_env

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its Hydra configs name its callbacks by module path
    spec.loader.exec_module(module)
    return module


def test_gpu_check_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_refuses_a_missing_image_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke", str(tmp_path / "nowhere"), str(out)],
        capture_output=True,
        text=True,
        env=cli_env() | {"PYTHON": sys.executable},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no image folder at" in proc.stderr
    assert not out.exists()


def test_gpu_matrix_of_the_check_is_bf16_eager_then_each_compile_mode() -> None:
    bench = benchmark_module()
    args = bench.parse_args(
        ["--suite", "gpu", "--precisions", "bf16-mixed", "--compile-modes", "default,reduce-overhead"]
    )
    rows = [(c["precision"], c["compile"], c["channels_last"]) for c in bench.gpu_configs(args)]
    assert rows == [
        ("bf16-mixed", "no", True),
        ("bf16-mixed", "default", True),
        ("bf16-mixed", "reduce-overhead", True),
    ]
    full = bench.gpu_configs(bench.parse_args(["--suite", "gpu"]))  # issue 16's matrix stays the default
    assert [c["compile"] for c in full] == ["no"] * 4 + ["default"] * 3
    assert {c["precision"] for c in full if c["compile"] == "default"} == {"bf16-mixed", "32-true", "16-mixed"}


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_part(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            for i in range(8):
                image = torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8)
                save_png(image, tmp_path / "data" / split / label / f"{i}.png")
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke", str(tmp_path / "data"), str(out)],
        capture_output=True,
        text=True,
        env=cli_env() | {"PYTHON": sys.executable, "SMOKE_SCALE": "10", "TMPDIR": str(tmp_path)},
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    for batch in (4, 8):
        assert f"## Batch {batch}: the bare step" in summary
        bare = (out / f"bare_{batch}.md").read_text()
        assert "| bf16-mixed | no | yes |" in bare and "| bf16-mixed | reduce-overhead | yes | skipped" in bare
    assert summary.count("throughput:") == 2  # the training run and the batch-8 Lightning run
    assert (out / "samples_last.png").stat().st_size > 0
    fid = (out / "sampling_fid.md").read_text()
    assert "| 32-true |" in fid and "| bf16-mixed |" in fid and "FID difference bf16 - float32" in fid
    assert not (out / "skipped.txt").exists()
    assert not list(tmp_path.glob("gpu_check_run*"))  # its temporary run folders are removed


@pytest.mark.slow
def test_framework_cost_rows(tmp_path: Path) -> None:
    bench = benchmark_module()
    args = bench.parse_args(["--suite", "framework", "--threads", "1", "--framework-steps", "3", "--rounds", "1"])
    result = bench.framework_cost(args)
    for loop in ("ddpm_lab", "bare"):
        assert len(result["runs"][loop]) == 1 and result["median"][loop]["wall"] > 0
    added = result["added"]["wall"]
    assert added == pytest.approx(result["median"]["ddpm_lab"]["wall"] - result["median"]["bare"]["wall"])
    text = bench.framework_report(args, result)
    assert f"**{added:.2f} ms** wall" in text and "| ddpm_lab |" in text and "| bare |" in text
