"""`python -m ddpm_lab.evaluate` on a tiny checkpoint with the small feature network (offline, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab.errors import ConfigError, OutputExistsError, WeightsMissingError
from ddpm_lab.evaluate import evaluate
from helpers import TINY_TRAIN, ours_checkpoint, run_cli

FAST_EVAL = ("features=tiny", "n=8", "batch_size=8", "sampler=ddpm", "sampler.steps=3", "kid_subsets=5")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """A tiny training run, with the optional FID callback switched on."""
    cwd = tmp_path_factory.mktemp("train")
    proc = run_cli(
        "ddpm_lab.train",
        *TINY_TRAIN,
        f"dataset.root={image_folder}",
        "callbacks=fid",
        "features@callbacks.fid.features=classifier",  # trained on the run's labelled images before step 1
        "callbacks.fid.features.epochs=1",
        "callbacks.fid.features.width=4",
        "callbacks.fid.features.num_features=8",
        "callbacks.fid.every_n_steps=3",
        "callbacks.fid.n=8",
        "callbacks.fid.batch_size=8",
        "callbacks.fid.sampler.steps=3",
        cwd=cwd,
    )
    (run,) = (cwd / "outputs" / "train").iterdir()
    assert "FID" in (run / "train.log").read_text(), proc.stderr[-2000:]
    return run


def quoted(path: Path) -> str:
    return f"'{path}'"  # quoted: pytest's tmp paths are arbitrary


@pytest.fixture
def compose_eval(cfg_eval):
    """The evaluate config with outputs under ``tmp_path`` (``eval`` unless ``out`` names another folder)."""
    return lambda tmp_path, *overrides, out="eval": cfg_eval(
        f"paths.output_root={tmp_path}",
        f"paths.output_dir={tmp_path / out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *overrides,
    )


def test_fid_callback_logs_during_training(run_dir):
    log = (run_dir / "train.log").read_text()
    assert "step 3: FID" in log and "n=8 generated vs 8 training images" in log
    assert "classifier: held-out accuracy" in log and "classifier8-" in log


def test_evaluate_cli_scores_a_checkpoint_against_the_runs_dataset(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cache = tmp_path / "cache"
    proc = run_cli(
        "ddpm_lab.evaluate", f"ckpt={quoted(ckpt)}", *FAST_EVAL, f"paths.cache_dir={quoted(cache)}", cwd=tmp_path
    )
    assert "n=8 generated vs 48 real images" in proc.stdout
    (out,) = (tmp_path / "outputs" / "evaluate").iterdir()
    result = json.loads((out / "results.json").read_text())
    assert result["n_fake"] == 8 and result["n_real"] == 48 and result["fid"] > 0
    assert result["global_step"] == 6 and "steps=3" in result["sampler"]
    assert (out / "samples.png").is_file()
    (stats,) = (cache / "fid_stats").iterdir()  # under paths.cache_dir, not the outputs or the dataset folder
    assert stats.name.startswith("ImageFolderDataModule_train_16px_tiny64")
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["evaluate"]


def test_real_statistics_are_cached_and_dataset_override_works(run_dir, tmp_path, image_folder, caplog, compose_eval):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = (
        f"ckpt={quoted(ckpt)}",
        *FAST_EVAL,
        "dataset=image_folder",
        f"dataset.root={image_folder}",
        "n_real=20",
    )
    first = evaluate(compose_eval(tmp_path, *overrides))
    results = (tmp_path / "eval" / "results.json").read_bytes()
    with pytest.raises(OutputExistsError, match="results.json"):  # the same folder again: nothing is overwritten
        evaluate(compose_eval(tmp_path, *overrides))
    assert (tmp_path / "eval" / "results.json").read_bytes() == results
    caplog.clear()
    with caplog.at_level("INFO"):
        second = evaluate(compose_eval(tmp_path, *overrides, out="eval2"))
    assert "features read from" in caplog.text
    assert first["n_real"] == second["n_real"] == 20
    assert first["fid"] == pytest.approx(second["fid"])  # same seed, same samples, same cached statistics


def test_missing_inception_weights_fail_before_sampling(run_dir, tmp_path, compose_eval):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_eval(
        tmp_path, f"ckpt={quoted(ckpt)}", "features=inception", f"features.weights_path={tmp_path}/w.pth"
    )
    with pytest.raises(WeightsMissingError, match="Inception weights not found at .*w.pth"):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()


def test_no_dataset_anywhere_is_one_clear_error(tmp_path, run_dir, compose_eval):
    lone = tmp_path / "lone" / "checkpoints"
    lone.mkdir(parents=True)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    checkpoint["ddpm_lab"]["config"]["run"]["config"] = {}  # as a converted checkpoint: no run recorded
    torch.save(checkpoint, lone / "last.ckpt")
    cfg = compose_eval(tmp_path, f"ckpt={quoted(lone / 'last.ckpt')}", *FAST_EVAL)
    with pytest.raises(ConfigError, match="does not exist and the checkpoint records no usable dataset; pass dataset="):
        evaluate(cfg)


def test_classifier_features_are_trained_once_and_reported(run_dir, tmp_path, compose_eval, capsys):
    """``features=classifier`` on an unconditional checkpoint: a domain FID/KID, the classifier cached and reused."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    small = ("features=classifier", "features.epochs=1", "features.width=4", "features.num_features=8")
    overrides = (f"ckpt={quoted(ckpt)}", *small, *FAST_EVAL[1:])
    first = evaluate(compose_eval(tmp_path, *overrides))
    second = evaluate(compose_eval(tmp_path, *overrides, out="eval2"))
    out = capsys.readouterr().out
    assert out.count("classifier: held-out accuracy") == 2 and "trained in" in out and "read from" in out
    assert first["features"].startswith("classifier8-") and first["fid"] == pytest.approx(second["fid"])
    assert 0 <= first["classifier"]["heldout_accuracy"] <= 1 and first["classifier"]["n_heldout"] == 5
    assert "class_accuracy" not in first  # unconditional samples asked for no class
    stats = sorted(p.name for p in (tmp_path / "cache" / "fid_stats").iterdir())
    assert len(stats) == 2 and stats[0].startswith("ImageFolderDataModule") and stats[1].startswith("classifier_16px")


def test_guidance_sweep_of_a_conditional_checkpoint(tmp_path, image_folder):
    """``guidance=0,1`` is one run: per-scale rows (FID, KID, class accuracy, counts), grids and the FID plot."""
    ckpt = ours_checkpoint(
        tmp_path / "cond.ckpt",
        [*TINY_TRAIN, f"dataset.root={image_folder}", "conditioning=class", "++model.num_classes=2"],
    )
    proc = run_cli(
        "ddpm_lab.evaluate",
        f"ckpt={quoted(ckpt)}",
        "guidance=0,1",
        "features=classifier",
        "features.epochs=1",
        "features.width=4",
        "features.num_features=8",
        *FAST_EVAL[1:],
        "dataset=image_folder",
        f"dataset.root={quoted(image_folder)}",
        f"paths.cache_dir={quoted(tmp_path / 'cache')}",
        "hydra.run.dir=eval",
        cwd=tmp_path,
    )
    assert "classifier: held-out accuracy" in proc.stdout
    for w in (0, 1):
        assert f"guidance {w}: FID" in proc.stdout and "(n=8 generated vs 48 real images" in proc.stdout
    out = tmp_path / "eval"
    result = json.loads((out / "results.json").read_text())
    rows = result["per_guidance"]
    assert [r["guidance"] for r in rows] == [0.0, 1.0] and all(r["n_fake"] == 8 for r in rows)
    assert result["fid"] == min(r["fid"] for r in rows) and result["guidance"] in (0.0, 1.0)
    assert [r["nfe"] for r in rows] == [6, 3]  # 3 DDPM steps; w = 0 runs both halves, w = 1 the conditional one
    assert result["nfe"] == (6 if result["guidance"] == 0.0 else 3)
    assert result["samples_per_class"] == {"0": 4, "1": 4}  # the dataset's 24 + 24 images, in proportion
    for r in rows:  # the same classes asked for at every scale; accuracy from the classifier's predictions
        assert {k: v["n"] for k, v in r["per_class"].items()} == {"0": 4, "1": 4}
        right = sum(v["n"] * v["accuracy"] for v in r["per_class"].values())
        assert r["class_accuracy"] == pytest.approx(right / 8) and r["kid_mean"] == r["kid_mean"]
    for name in ("fid_vs_guidance.png", "samples_guidance_0.png", "samples_guidance_1.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "samples.png").exists()


def test_fid_comes_with_its_spread_and_floor_and_published_statistics_replace_the_real_images(
    run_dir, tmp_path, image_folder, compose_eval, capsys
):
    """One run with the real images (FID ± its bootstrap std, the real-vs-real floor at the same n), then the same
    samples against an .npz of those images' mu/sigma, as pytorch-fid writes it: the same FID, no KID, no floor."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    common = (f"ckpt={quoted(ckpt)}", *FAST_EVAL, "bootstrap=4")
    first = evaluate(compose_eval(tmp_path, *common, "dataset=image_folder", f"dataset.root={image_folder}"))
    assert first["fid_std"] > 0 and first["fid_bootstrap"] == 4
    assert first["floor"]["method"] == "disjoint" and first["floor"]["n"] == 8 and first["floor"]["fid"] > 0
    assert "4 bootstrap resamples of the generated images" in first["uncertainty"]["fid_std"]
    out = capsys.readouterr().out
    assert f"FID {first['fid']:.3f} ± {first['fid_std']:.3f}" in out
    assert "real-vs-real floor: FID" in out and "n=8 each" in out

    real = torch.load(first["real_stats"], weights_only=True)["features"].double()
    mu, sigma = real.mean(0), real.T.cov()
    np.savez_compressed(tmp_path / "published.npz", mu=mu.numpy(), sigma=sigma.numpy())
    second = evaluate(compose_eval(tmp_path, *common, f"reference_stats={tmp_path / 'published.npz'}", out="eval2"))
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-9) and second["fid_std"] > 0
    assert second["kid_mean"] is None and second["n_real"] is None and second["floor"] is None
    assert "KID needs the real images' features" in second["uncertainty"]["kid"]
    assert second["reference_stats"] == str(tmp_path / "published.npz") and "real_stats" not in second
    saved = json.loads((tmp_path / "eval2" / "results.json").read_text())
    assert saved["fid"] == second["fid"] and saved["floor"] is None
    out = capsys.readouterr().out
    assert "vs reference statistics" in out and "real-vs-real floor: none with reference_stats=" in out
