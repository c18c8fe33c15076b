"""The sweep report: FID-vs-NFE lines, one per setting other than the number of steps (jobs without both scores
left out); a second sweep into the same folder adds its rows, and a report that would lose one is left alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from ddpm_lab.config.sweep_report import SweepReport, fid_vs_nfe_series
from ddpm_lab.errors import ReportError
from helpers import snapshot


def row(sampler: str, steps: int, fid: float | None, seconds: float | None = 0.01) -> dict[str, Any]:
    settings = {"sampler": sampler, "sampler.steps": str(steps), "n": "16"}
    return {"job": f"{sampler}_{steps}", "settings": settings, "nfe": steps, "fid": fid, "seconds_per_image": seconds}


def test_one_line_per_sampler_with_every_step_count_it_has_scores_for():
    rows = [row("ddim", 10, 30.0), row("ddim", 20, 20.0), row("dpm_solver", 10, 25.0, None), row("ddim", 50, None)]
    assert fid_vs_nfe_series(rows) == {
        "sampler=ddim": [(10, 30.0, 0.01), (20, 20.0, 0.01)],
        "sampler=dpm_solver": [(10, 25.0, None)],
    }


def test_a_sweep_over_steps_alone_is_one_line_named_fid():
    assert list(fid_vs_nfe_series([row("ddim", 10, 30.0), row("ddim", 20, 20.0)])) == ["FID"]


def job(sweep: Path, name: str, steps: int, fid: float) -> Path:
    """A finished evaluate job's folder: its Hydra record and its results.json."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- sampler=ddim\n- sampler.steps={steps}\n")
    (folder / "results.json").write_text(json.dumps({"nfe": steps, "fid": fid, "n_fake": 8, "sampling_seconds": 0.8}))
    return folder


def report(sweep: Path, *jobs: Path) -> SweepReport:
    callback = SweepReport()
    callback.jobs = [
        (folder, (folder / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split()) for folder in jobs
    ]
    return callback


def test_a_second_sweep_into_the_same_folder_adds_its_rows(tmp_path: Path):
    first = [job(tmp_path, "0_steps-2", 2, 30.0), job(tmp_path, "1_steps-4", 4, 20.0)]
    report(tmp_path, *first).merged_report(tmp_path)
    second = job(tmp_path, "0_steps-8", 8, 10.0)
    paths, rows = report(tmp_path, second).merged_report(tmp_path)
    assert [r["job"] for r in rows] == ["0_steps-2", "1_steps-4", "0_steps-8"]
    lines = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["sampler.steps"], r["fid"]) for r in lines] == [("2", "30"), ("4", "20"), ("8", "10")]
    assert "| 8 | 8 | 10 |" in (tmp_path / "sweep.md").read_text() and paths[2].name == "fid_vs_nfe.png"


def test_a_report_that_would_lose_rows_or_is_not_ours_is_left_as_it_is(tmp_path: Path):
    first = [job(tmp_path, "0_steps-2", 2, 30.0), job(tmp_path, "1_steps-4", 4, 20.0)]
    report(tmp_path, *first).merged_report(tmp_path)
    (first[0] / "results.json").unlink()  # a job the report lists is gone
    new = job(tmp_path, "0_steps-8", 8, 10.0)
    before = snapshot(tmp_path)
    with pytest.raises(ReportError, match="lists job.* 0_steps-2 whose results.json is gone .*nothing dropped"):
        report(tmp_path, new).merged_report(tmp_path)
    assert snapshot(tmp_path) == before
    for name in ("sweep.csv", "fid_vs_nfe.png"):
        (tmp_path / name).unlink()
    (tmp_path / "sweep.md").write_text("# my notes on this sweep\n")  # the user's own file, no report beside it
    with pytest.raises(ReportError, match="sweep.csv cannot be read as a sweep report"):
        report(tmp_path, new).merged_report(tmp_path)
    assert (tmp_path / "sweep.md").read_text() == "# my notes on this sweep\n"
