"""The FID-vs-NFE figure: one line per series with its points in NFE order, each point with a known wall time
labelled, every NFE a tick."""

from __future__ import annotations

from ddpm_lab.artifacts.figures import fid_vs_nfe_figure


def test_one_line_per_series_points_sorted_by_nfe_and_labelled_with_their_time():
    series = {"sampler=ddim": [(50, 12.0, 0.02), (10, 30.0, 0.004)], "sampler=dpm": [(20, 15.0, None)]}
    (ax,) = fid_vs_nfe_figure(series).axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines == {"sampler=ddim": ([10, 50], [30.0, 12.0]), "sampler=dpm": ([20], [15.0])}
    assert sorted(t.get_text() for t in ax.texts) == ["20 ms/img", "4 ms/img"]  # the dpm point has no time
    assert list(ax.get_xticks()) == [10, 20, 50] and ax.get_xscale() == "log"


def test_no_scores_draws_empty_axes_without_a_legend():
    (ax,) = fid_vs_nfe_figure({}).axes
    assert ax.get_lines() == [] and ax.get_legend() is None
