"""The FID-vs-NFE figure: one line per series with its points in NFE order, each point with a known wall time
labelled, every NFE a tick unless it would print over a rounder one."""

from __future__ import annotations

from ddpm_lab.artifacts.figures import fid_vs_nfe_figure, nfe_ticks


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


def test_heuns_odd_nfe_beside_round_ones_keep_the_round_ticks():
    """Heun's 2N − 1 evaluations (9, 19, 35, 49, 99) in one figure with the others' 10, 20, 35, 50, 100."""
    assert nfe_ticks([9, 10, 19, 20, 25, 35, 49, 50, 99, 100]) == [10, 20, 25, 35, 50, 100]
    assert nfe_ticks([9, 19, 35]) == [9, 19, 35]  # alone, each is its own tick
    series = {"heun": [(9, 9.5, None), (19, 5.7, None)], "ddim": [(10, 8.8, None), (20, 6.6, None)]}
    (ax,) = fid_vs_nfe_figure(series).axes
    assert list(ax.get_xticks()) == [10, 20]
