"""``python -m ddpm_lab.visualize``: every mistake and fault in this table is one ``error:`` line, exit status 2,
found before any figure is written, and leaves every file that was there before as it was.

The harness is ``tests/cli/mistakes.py``; most cases run ``main()`` in this process, a few the real command line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddpm_lab.visualize import main
from helpers import TINY_TRAIN, ours_checkpoint
from mistakes import case, check_case, counts, run_in_process, run_subprocess, write_inputs

BASE = ("dataset=image_folder", "dataset.root={tmp}/images", "dataset.image_size=16", "paths.output_root={tmp}/out")

CASES = [
    # mistyped keys: one line instead of Hydra's report (exit status 1)
    case("keys", "n_image=3", "n_image is not a setting of visualize.yaml"),
    # types
    case("types", "gif_frames=abc", "gif_frames must be an integer, got 'abc'"),
    case("types", "seed=1.5", "seed must be an integer, got 1.5"),
    case("types", "timesteps=5", "timesteps must be a list, got 5"),
    case("types", "dataset.flip=maybe", "dataset.flip must be true or false"),
    # ranges
    case("ranges", "n_images=0", "n_images must be >= 1, got 0"),
    case("ranges", "gif_ms=-80", "gif_ms must be >= 1, got -80"),
    case("ranges", "timesteps=[]", "timesteps is an empty list"),
    case("ranges", "timesteps=[-3]", "timesteps must be a list of integers >= 0, got [-3]"),
    case("ranges", "schedule.timesteps=0", "schedule.timesteps must be >= 1, got 0"),
    case("ranges", "schedule.beta_end=1.5", "schedule.beta_end must be in (0, 1)"),
    case("ranges", ["schedule=cosine", "schedule.max_beta=2"], "schedule.max_beta must be in (0, 1]"),
    case("ranges", "dataset.image_size=0", "dataset.image_size must be >= 1, got 0"),
    # required values
    case("missing", "dataset.root=???", "dataset.root is required but not set: add dataset.root=<folder"),
    case("missing", "paths.output_root=null", "paths.output_root must be a folder, got None"),
    # enumerations
    case("enumerations", "dataset.channels=2", "dataset.channels must be one of (1, 3), got 2"),
    case("enumerations", "dataset.split=val", "dataset.split must be one of ('train', 'test', 'all')"),
    case("enumerations", "dataset.on_error=warn", "dataset.on_error must be one of ('skip', 'raise')"),
    # data: found before the first figure is written
    case("data", "dataset.root={tmp}/missing", "image folder {tmp}/missing does not exist"),
    case("data", "dataset.root={tmp}/a_file", "image folder {tmp}/a_file is a file"),
    case("data", "dataset.root={tmp}/empty_folder", "{tmp}/empty_folder holds no images"),
    case("data", "dataset.root={tmp}/garbage", "unreadable image(s) under {tmp}/garbage"),
    # output folders that cannot be created
    case("output", "paths.output_root={tmp}/a_file", "{tmp}/a_file is a file, not a folder"),
    # the HTML explorer and its checkpoint
    case("ranges", "html_frames=0", "html_frames must be >= 1, got 0"),
    case("missing", "ckpt={tmp}/good.ckpt", "ckpt= is read by the HTML explorer only: add html=true"),
    case("checkpoints", ["html=true", "ckpt={tmp}/hostile.ckpt"], "{tmp}/hostile.ckpt"),
    case(
        "checkpoints",
        ["html=true", "ckpt={tmp}/good.ckpt", "dataset.image_size=8"],
        "the dataset serves (3, 8, 8) images but the model of {tmp}/good.ckpt takes (3, 16, 16)",
    ),
    case(  # the explorer shows the unconditional model, which a model imported without a null class lacks
        "checkpoints",
        ["html=true", "ckpt={tmp}/no_null.ckpt"],
        "ckpt={tmp}/no_null.ckpt: the explorer shows the unconditional model, but this model has no null",
    ),
]

SUBPROCESS = [c for c in CASES if c.overrides[0] in ("dataset.root=???", "dataset.root={tmp}/garbage")]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes_visualize")
    write_inputs(root, lambda p: ours_checkpoint(p, [*TINY_TRAIN, f"dataset.root={root / 'images'}"]))
    no_null = ("conditioning=class", "++model.num_classes=2", "++model.null_class=false")  # as an import
    ours_checkpoint(root / "no_null.ckpt", [*TINY_TRAIN, *no_null])
    return root


def test_the_table_is_varied():
    assert len(CASES) >= 20 and len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {"keys", "types", "ranges", "missing", "enumerations", "data", "output", "checkpoints"}


def test_the_base_config_draws_with_integral_floats(tmp: Path):
    """The control: the table's base launch works (``n_images=2.0`` is an integer)."""
    argv = [o.format(tmp=tmp) for o in BASE] + ["n_images=2.0", "gif_frames=3.0", f"hydra.run.dir={tmp}/control"]
    outcome = run_in_process(main, argv, tmp)
    assert outcome.status == 0, outcome.stderr[-3000:]
    assert (tmp / "control" / "forward.gif").is_file()


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)


@pytest.mark.parametrize("item", SUBPROCESS, ids=[c.id for c in SUBPROCESS])
def test_mistake_through_the_command_line(item, tmp: Path):
    check_case(lambda argv, cwd: run_subprocess("ddpm_lab.visualize", argv, cwd), BASE, item, tmp)


def test_html_explorer_with_a_checkpoint(tmp: Path):
    """``html=true ckpt=...``: explorer.html beside the figures, one frame per chosen t, each with x_t, the model's
    x̂_0 and the reverse process, under the checkpoint's schedule (T=50), and nothing fetched from anywhere."""
    argv = [o.format(tmp=tmp) for o in BASE] + [
        "n_images=2",
        "gif_frames=3",
        "html=true",
        "html_frames=5",
        f"ckpt={tmp}/good.ckpt",
        f"hydra.run.dir={tmp}/explorer",
    ]
    outcome = run_in_process(main, argv, tmp)
    assert outcome.status == 0, outcome.stderr[-3000:]
    page = (tmp / "explorer" / "explorer.html").read_text()
    assert re.findall(r'class="frame" data-t="(\d+)"', page) == ["0", "12", "24", "37", "49"]
    assert page.count("<img ") == 5 * 3 and page.count('src="data:image/png;base64,') == 5 * 3
    assert "x̂_0" in page and "reverse process" in page and "T=50" in page
    # Self-contained: no address anywhere, every src a data: URI, nothing linked or imported.
    assert not re.search(r"https?:|\b(src|href)=\"(?!data:)|<link|@import|url\(", page)
