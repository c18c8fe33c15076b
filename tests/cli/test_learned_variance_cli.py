"""Learned variances end to end: hybrid training with val/bpd (in process, a few steps), then one ``sample`` and one
``evaluate metrics=nll`` run on its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.config.build import build, build_components, build_module
from helpers import TINY_TRAIN, compose_config, run_cli

LEARNED = ("diffusion.variance=learned_range", "diffusion.loss=hybrid", "model=unet_tiny", "warmup_steps=0")


@pytest.fixture(scope="module")
def hybrid_ckpt(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """Four hybrid-loss steps of a tiny U-Net, validating (and bounding, ``val_bpd_every=1``) every 2 steps."""
    root = tmp_path_factory.mktemp("hybrid")
    cfg = compose_config(
        "train", (*TINY_TRAIN, *LEARNED, f"dataset.root={image_folder}", "val_bpd_every=1", "val_bpd_stride=7")
    )
    net, diffusion, sampler = build_components(cfg, warn=False)
    module = build_module(cfg, net, diffusion, sampler)
    before = [p.detach().clone() for p in net.parameters()]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=4,
        val_check_interval=2,
        num_sanity_val_steps=0,
        logger=pl.loggers.TensorBoardLogger(root, name="tb", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=build("dataset", cfg.dataset))
    assert net.conv_out.out_channels == 2 * net.in_channels == 6
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()) if b.requires_grad)
    assert bool(trainer.callback_metrics["train/loss"].isfinite())
    trainer.save_checkpoint(root / "hybrid.ckpt")
    return root / "hybrid.ckpt"


@pytest.mark.slow
def test_hybrid_training_logs_val_bpd_and_its_figure(hybrid_ckpt: Path) -> None:
    events = EventAccumulator(str(hybrid_ckpt.parent / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    bpd = [e.value for e in events.Scalars("val/bpd")]
    assert len(bpd) == 2 and all(0 < v < 50 for v in bpd), bpd
    assert [e.step for e in events.Images("val/bpd_terms")] == [2, 4]
    loaded = load_model(hybrid_ckpt)
    assert loaded.config["model"]["out_channels"] == 2 * loaded.net.in_channels  # derived, never typed
    assert loaded.diffusion.learned_variance and loaded.diffusion.loss_type == "hybrid"


@pytest.mark.slow
def test_learned_variance_checkpoint_samples_and_bounds_through_the_cli(
    hybrid_ckpt: Path, image_folder: Path, tmp_path: Path
) -> None:
    run_cli(
        "ddpm_lab.sample",
        f"ckpt={hybrid_ckpt}",
        "n=2",
        "sampler=ddpm",
        "sampler.steps=5",
        "device=cpu",
        "hydra.run.dir=sampled",
        cwd=tmp_path,
    )
    assert len(list((tmp_path / "sampled" / "samples").glob("*.png"))) == 2
    proc = run_cli(
        "ddpm_lab.evaluate",
        f"ckpt={hybrid_ckpt}",
        "metrics=nll",
        "nll.n=6",
        "nll.stride=10",
        "batch_size=4",
        "device=cpu",
        "dataset=image_folder",
        f"dataset.root={image_folder}",
        "hydra.run.dir=bound",
        cwd=tmp_path,
    )
    assert "bits/dim on 6 images" in proc.stdout and "approximate: every 10th L_t (5 of 49)" in proc.stdout
    result = json.loads((tmp_path / "bound" / "results.json").read_text())
    assert result["variance"] == "learned_range" and result["n_images"] == 6 and len(result["per_t"]) == 5
    parts = result["prior"] + result["terms"] + result["decoder"]
    assert abs(result["bpd"] - parts) < 1e-4 and result["bpd"] > 0
    assert (tmp_path / "bound" / "bound_terms.png").stat().st_size > 10_000
