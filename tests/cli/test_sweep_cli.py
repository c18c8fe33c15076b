"""``python -m ddpm_lab.evaluate -m``: a sampler sweep writes ONE table and ONE FID-vs-NFE plot over its jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ddpm_lab.artifacts.posthoc_ema import write_posthoc_checkpoints
from helpers import run_cli

pytestmark = pytest.mark.slow


def test_sampler_sweep_writes_one_table_and_one_plot(tiny_run: Path, tmp_path: Path) -> None:
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    proc = run_cli(
        "ddpm_lab.evaluate",
        "-m",
        f"ckpt='{ckpt}'",
        "features=tiny",
        "n=8",
        "batch_size=8",
        "kid_subsets=5",
        f"paths.cache_dir='{tmp_path / 'cache'}'",
        "sampler=ddim,diffusers",
        "sampler.steps=2,4",
        "sampler.spacing=choice(trailing)",  # a one-value sweep: sampler=null until each job picks one
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == [
        "fid_vs_nfe.png",
        "multirun.yaml",
        "sweep.csv",
        "sweep.md",
    ]
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["sampler"], r["sampler.steps"], r["nfe"]) for r in rows] == [  # sampler.spacing does not vary
        ("ddim", "2", "2"),
        ("ddim", "4", "4"),
        ("diffusers", "2", "2"),
        ("diffusers", "4", "4"),
    ]
    for row in rows:
        result = json.loads((sweep / row["job"] / "results.json").read_text())
        assert float(row["fid"]) == pytest.approx(result["fid"], rel=1e-3)
        assert float(row["seconds_per_image"]) == pytest.approx(result["sampling_seconds"] / 8, rel=1e-3)
    # the default diffusers scheduler, with ddpm_lab's trailing spacing, and the table printed as well
    assert "UniPCMultistepScheduler" in json.loads((sweep / rows[2]["job"] / "results.json").read_text())["sampler"]
    assert "| sampler | sampler.steps | nfe | fid |" in proc.stdout
    assert (sweep / "fid_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second sweep into the same folder, one of whose jobs is a mistake: the good job's row joins the four
    # (none dropped), the mistake fails its job alone and is named, and the sweep exits 2.
    before = {p: p.read_bytes() for p in sweep.glob("*/results.json")}
    proc = run_cli(
        "ddpm_lab.evaluate", "-m", f"ckpt='{ckpt}'", "features=tiny", "n=8", "batch_size=8", "kid_subsets=5",
        f"paths.cache_dir='{tmp_path / 'cache'}'", f"hydra.sweep.dir='{sweep}'", "sampler=ddim",
        "sampler.steps=3,80", cwd=tmp_path, check=False,
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("error: job 1 (") and "sampler.steps must be in [1, 50], got 80" in errors[0], errors
    assert str(ckpt) in errors[0] and "sampler.steps=80" in errors[0], errors  # every override, ckpt too
    assert errors[-1].startswith("error: 1 multirun job(s) failed") and "job 1 (" in errors[-1], errors
    merged = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["sampler"], r["sampler.steps"]) for r in merged] == [
        ("ddim", "2"),
        ("ddim", "4"),
        ("diffusers", "2"),
        ("diffusers", "4"),
        ("ddim", "3"),
    ]
    assert [r["job"] for r in merged[:4]] == [r["job"] for r in rows]
    assert {p: p.read_bytes() for p in before} == before  # the first sweep's jobs are untouched
    assert len(list(sweep.glob("*/results.json"))) == 5  # the failed job left no results behind


def test_a_sweep_over_post_hoc_ema_lengths_is_a_table_of_fid_against_length(posthoc_run, image_folder, tmp_path):
    paths = write_posthoc_checkpoints(posthoc_run / "checkpoints" / "last.ckpt", [0.05, 0.15], out=tmp_path / "ema")
    run_cli(
        "ddpm_lab.evaluate",
        "-m",
        "ckpt=" + ",".join(f"'{p}'" for p in paths),
        "features=tiny",
        "n=8",
        "batch_size=8",
        "kid_subsets=5",  # no dataset=: the checkpoints, outside the run folder, carry the run's dataset
        "sampler=ddim",
        "sampler.steps=2",
        f"paths.cache_dir='{tmp_path / 'cache'}'",
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [r["ckpt"] for r in rows] == ["ema_0.05_step_0000004.ckpt", "ema_0.15_step_0000004.ckpt"]
    for row, path in zip(rows, paths):
        result = json.loads((sweep / row["job"] / "results.json").read_text())
        assert result["ckpt"] == str(path) and float(row["fid"]) == pytest.approx(result["fid"], rel=1e-3)
