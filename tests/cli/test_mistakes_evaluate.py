"""``python -m ddpm_lab.evaluate``: every mistake and fault in this table is one ``error:`` line, exit status 2,
found before any sampling or feature extraction, and leaves every file that was there before as it was.

The harness is ``tests/cli/mistakes.py``; most cases run ``main()`` in this process, a few the real command line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ddpm_lab.evaluate import main
from helpers import TINY_TRAIN, conditional_checkpoint, ours_checkpoint, write_image_folder
from mistakes import case, check_case, counts, run_in_process, run_subprocess, write_inputs

BASE = (
    "ckpt={tmp}/good.ckpt",
    "paths.output_root={tmp}/out",
    "paths.cache_dir={tmp}/cache",
    "n=4",
    "features=tiny",
    "device=cpu",
)
DATA = ("dataset=image_folder", "dataset.root={tmp}/images")

CASES = [
    # mistyped keys: one line instead of Hydra's report (exit status 1)
    case("keys", "n_fake=10", "n_fake is not a setting of evaluate.yaml"),
    # required values
    case("missing", "ckpt=???", "ckpt is required but not set: add ckpt=<run>/checkpoints/last.ckpt"),
    case("missing", "cache_dir=''", "cache_dir must be a folder or null (<paths.cache_dir>/fid_stats), got ''"),
    case("missing", "dataset=image_folder", "dataset.root is required but not set"),
    case("missing", "paths.output_root=null", "paths.output_root must be a folder, got None"),
    # types
    case("types", "n=abc", "n must be an integer, got 'abc'"),
    case("types", "is_splits=abc", "is_splits must be an integer"),
    case("types", "kid_subset_size=1.5", "kid_subset_size must be an integer, got 1.5"),
    case("types", "seed=-1.5", "seed must be an integer, got -1.5"),
    case("types", "features.width=abc", "features.width must be an integer"),
    case("types", "guidance=abc", "guidance must be a number >= 0 or a list of them, got 'abc'"),
    # ranges
    case("ranges", "n=1", "n must be >= 2, got 1"),
    case("ranges", "guidance=1,-2", "guidance must be a number >= 0 or a list of them, got '1,-2'"),
    case("ranges", "guidance_rescale=2", "guidance_rescale must be in [0, 1], got 2.0"),
    case("ranges", "n_real=1", "n_real must be >= 2, got 1"),
    case("ranges", "kid_subsets=0", "kid_subsets must be >= 1, got 0"),
    case("ranges", "batch_size=0", "batch_size must be >= 1, got 0"),
    case("ranges", "bootstrap=1", "bootstrap=1 gives no spread: set bootstrap=0 (none) or a number of resamples >= 2"),
    case("ranges", "bootstrap=-1", "bootstrap must be >= 0, got -1"),
    # processes (devices=, num_nodes=)
    case("types", "devices=abc", "devices must be an integer, got 'abc'"),
    case("ranges", "devices=0", "devices must be >= 1, got 0"),
    case("ranges", "num_nodes=0", "num_nodes must be >= 1, got 0"),
    case("ranges", "devices=4096", "devices=4096 but this machine has"),
    case("enumerations", ["metrics=nll", "devices=2"], "metrics=nll runs in one process: set devices=1 num_nodes=1"),
    case("enumerations", "floor=maybe", "floor must be true or false, got 'maybe'"),
    case("ranges", "features.num_features=0", "features.num_features must be >= 2, got 0"),
    case("ranges", ["sampler=ddim", "sampler.steps=0"], "sampler.steps must be in [1, 50], got 0"),
    # enumerations
    case("enumerations", "weights=best", "weights must be one of ('auto', 'ema', 'raw'), got 'best'"),
    case("enumerations", "device=tpu", "device=tpu is not a device"),
    case("enumerations", "metrics=is", "metrics must be one of ('fid', 'nll'), got 'is'"),
    case("ranges", ["metrics=nll", "nll.stride=0"], "nll.stride must be >= 1, got 0"),
    case("enumerations", [*DATA, "dataset.split=val"], "dataset.split must be one of ('train', 'test', 'all')"),
    # checkpoints, run configs and weights files: missing, broken, hostile
    case("checkpoints", "ckpt={tmp}/random.ckpt", "cannot read checkpoint {tmp}/random.ckpt"),
    case(
        "checkpoints",
        [*DATA, "ckpt={tmp}/edm.ckpt", "metrics=nll"],
        "metrics=nll bounds DDPM's likelihood, but {tmp}/edm.ckpt is an EDM model",
    ),
    case("checkpoints", "ckpt={tmp}/hostile.ckpt", "cannot read checkpoint {tmp}/hostile.ckpt safely"),
    case("checkpoints", "ckpt={tmp}/bare_run/checkpoints/last.ckpt", "{tmp}/bare_run/.hydra/config.yaml"),
    case("checkpoints", "ckpt={tmp}/target_run/checkpoints/last.ckpt", "refusing to build _target_='os.system'"),
    case("checkpoints", "ckpt={tmp}/env_run/checkpoints/last.ckpt", "refusing the interpolation '${{oc.env:HOME}}'"),
    case("checkpoints", ["features=inception", "features.weights_path={tmp}/missing.pth"], "{tmp}/missing.pth"),
    case(  # a file that is not the standard one: refused before torch-fidelity unpickles it
        "checkpoints",
        ["features=inception", "features.weights_path={tmp}/hostile.ckpt"],
        "{tmp}/hostile.ckpt is not the FID Inception weights",
    ),
    case("types", ["features=inception", "features.download=maybe"], "features.download must be true or false"),
    case(  # guidance=0,1 (Hydra's sweep syntax) is read as a list, and refused for an unconditional model
        "checkpoints",
        [*DATA, "guidance=0,1"],
        "guidance=0,1 needs a class-conditional checkpoint, but {tmp}/good.ckpt is unconditional",
    ),
    # data
    case("data", ["dataset=image_folder", "dataset.root={tmp}/missing"], "image folder {tmp}/missing does not exist"),
    case("data", ["dataset=image_folder", "dataset.root={tmp}/empty_folder"], "{tmp}/empty_folder holds no images"),
    case("data", ["dataset=image_folder", "dataset.root={tmp}/garbage"], "unreadable image(s) under {tmp}/garbage"),
    case(  # a class-conditional model of one class, and a dataset of two
        "data",
        ["ckpt={tmp}/one_class.ckpt", *DATA],
        "ImageFolderDataModule at {tmp}/images has labels up to 1, but {tmp}/one_class.ckpt knows 1 class(es)",
    ),
    case(  # no class sub-folders: nothing to train the classifier on
        "data",
        ["features=classifier", "dataset=image_folder", "dataset.root={tmp}/one_image"],
        "features=classifier needs images of at least two labelled classes, but ImageFolderDataModule at "
        "{tmp}/one_image has 0",
    ),
    # options that do not apply: refused, never ignored
    case("inapplicable", ["metrics=nll", "guidance=2"], "guidance=2 does not apply to metrics=nll"),
    case("inapplicable", ["metrics=nll", "guidance_rescale=0.3"], "guidance_rescale=0.3 does not apply to metrics"),
    case("inapplicable", ["metrics=nll", "sampler=ddim"], "sampler=DDIMSampler does not apply to metrics=nll"),
    case("inapplicable", ["metrics=nll", "n_real=10"], "n_real=10 does not apply to metrics=nll"),
    case(
        "inapplicable",
        [*DATA, "guidance_rescale=0.3"],
        "guidance_rescale=0.3 needs a class-conditional checkpoint, but {tmp}/good.ckpt is unconditional",
    ),
    case(
        "inapplicable",
        ["ckpt={tmp}/pets.ckpt", *DATA, "guidance_rescale=0.3"],
        "guidance_rescale=0.3 rescales guided outputs, but guidance is 1 (none)",
    ),
    case(
        "inapplicable",
        ["ckpt={tmp}/no_null.ckpt", *DATA, "guidance=0,1"],
        "guidance=0,1 for {tmp}/no_null.ckpt: this model has no null (unconditional) class",
    ),
    # classes are names: a dataset without the checkpoint's classes cannot score them
    case(
        "data",
        ["ckpt={tmp}/pets.ckpt", *DATA],
        "{tmp}/pets.ckpt was trained on class 'cat', which ImageFolderDataModule at {tmp}/images does not have",
    ),
    # published reference statistics (reference_stats=)
    case("data", "reference_stats={tmp}/missing.npz", "reference_stats={tmp}/missing.npz: no such file"),
    case("data", "reference_stats={tmp}/a_file", "reference_stats={tmp}/a_file is not a readable .npz file"),
    case(  # statistics of another feature layer than the extractor's
        "data",
        "reference_stats={tmp}/ref8.npz",
        "reference_stats={tmp}/ref8.npz: 'mu' has shape (8,), but features=tiny64w32s0 needs (64,)",
    ),
    case("data", ["reference_stats={tmp}/ref8.npz", "n_real=10"], "n_real= picks real images, but reference_stats="),
    case(
        "data",
        ["metrics=nll", "reference_stats={tmp}/ref8.npz"],
        "reference_stats= is read by metrics=fid only: leave it out with metrics=nll",
    ),
    case("types", "reference_stats=''", "reference_stats must be the path of an .npz of mu and sigma, got ''"),
    # output folders that cannot be created
    case("output", "paths.output_root={tmp}/a_file", "{tmp}/a_file is a file, not a folder"),
    case(
        "output",
        "cache_dir={tmp}/a_file",
        "cache_dir must be a folder or null (<paths.cache_dir>/fid_stats), got '{tmp}/a_file'",
    ),
]

SUBPROCESS = [c for c in CASES if c.overrides[0] in ("ckpt=???", "ckpt={tmp}/target_run/checkpoints/last.ckpt")]

RUN_CONFIGS = {
    # a dataset section that would run a shell command when built
    "target_run": "dataset:\n  _target_: os.system\n  command: touch {tmp}/PWNED\n",
    # a resolver that would read the environment
    "env_run": (
        "dataset:\n  _target_: ddpm_lab.data.ImageFolderDataModule\n  root: ${{oc.env:HOME}}\n  image_size: 16\n"
    ),
}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes_evaluate")
    write_inputs(root, lambda p: ours_checkpoint(p, [*TINY_TRAIN, f"dataset.root={root / 'images'}"]))
    ours_checkpoint(root / "edm.ckpt", [*TINY_TRAIN, "diffusion=edm"])
    ours_checkpoint(root / "one_class.ckpt", [*TINY_TRAIN, "conditioning=class", "++model.num_classes=1"])
    write_image_folder(root / "pets", n_per_class=1, size=8, classes=("cat", "dog"))
    conditional_checkpoint(root / "pets.ckpt", [*TINY_TRAIN, f"dataset.root={root / 'pets'}"])
    no_null = ("conditioning=class", "++model.num_classes=2", "++model.null_class=false")  # as an import
    ours_checkpoint(root / "no_null.ckpt", [*TINY_TRAIN, *no_null])
    np.savez(root / "ref8.npz", mu=np.zeros(8), sigma=np.eye(8))  # statistics of 8 features
    for run in ("bare_run", *RUN_CONFIGS):  # a checkpoint inside a run folder, with no or a hostile config
        (root / run / "checkpoints").mkdir(parents=True)
        shutil.copy(root / "good.ckpt", root / run / "checkpoints" / "last.ckpt")
    for run, text in RUN_CONFIGS.items():
        (root / run / ".hydra").mkdir()
        (root / run / ".hydra" / "config.yaml").write_text(text.format(tmp=root))
    return root


def test_the_table_is_varied():
    assert len(CASES) >= 25 and len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {
        "keys",
        "missing",
        "types",
        "ranges",
        "enumerations",
        "checkpoints",
        "data",
        "output",
        "inapplicable",
    }


def test_the_base_config_evaluates(tmp: Path):
    """The control: the table's base launch with a dataset works (``n=4.0`` is an integer)."""
    argv = [o.format(tmp=tmp) for o in (*BASE, *DATA)] + [
        "n=4.0",
        "n_real=8.0",
        "kid_subset_size=3.0",
        f"hydra.run.dir={tmp}/control",
    ]
    outcome = run_in_process(main, argv, tmp)
    assert outcome.status == 0, outcome.stderr[-3000:]
    assert (tmp / "control" / "results.json").is_file()
    shutil.rmtree(tmp / "cache" / "fid_stats")  # the real-image cache it wrote: the cases below start without it


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)


@pytest.mark.parametrize("item", SUBPROCESS, ids=[c.id for c in SUBPROCESS])
def test_mistake_through_the_command_line(item, tmp: Path):
    check_case(lambda argv, cwd: run_subprocess("ddpm_lab.evaluate", argv, cwd), BASE, item, tmp)
