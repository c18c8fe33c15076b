"""``labelled_grid``: a row per class with its name on the left, column titles above (class grids, guidance strips)."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.artifacts.images import labelled_grid


def test_rows_get_their_names_and_columns_their_titles():
    rows = torch.ones(3, 4, 1, 8, 8)  # white images: any dark pixel is text
    grid = labelled_grid(rows, ["cat", "dog", "owl"], ["w=0", "w=1", "w=3", "w=5"])
    plain = labelled_grid(rows, ["", "", ""])
    assert grid.dtype == torch.uint8 and grid.shape[0] == 1  # grayscale in, grayscale out
    assert grid.shape[1] > plain.shape[1] and grid.shape[2] > plain.shape[2]  # a title row, a label column
    assert int((grid < 128).sum()) > 0 and int((plain < 128).sum()) == 0
    cell = 24 + 2  # 8 px enlarged to 24 for the text, plus padding
    assert grid.shape[2] - plain.shape[2] >= 20 and plain.shape[1] == 3 * cell + 2
    assert labelled_grid(torch.zeros(2, 1, 3, 32, 32), ["a", "b"]).shape[0] == 3  # RGB stays RGB


def test_labels_must_match_the_rows():
    with pytest.raises(ValueError, match="row labels"):
        labelled_grid(torch.zeros(2, 3, 1, 8, 8), ["only one"])
