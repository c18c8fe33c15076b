"""The sweep report's FID-vs-NFE lines: one per setting other than the number of steps, jobs without both scores
left out."""

from __future__ import annotations

from typing import Any

from ddpm_lab.config.sweep_report import fid_vs_nfe_series


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
