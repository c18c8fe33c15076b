"""EMA, mixed precision, DDP on two CPU processes, non-finite loss and multirun sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import WeightAveraging

from ddpm_lab.artifacts.allow_list import build_stored
from ddpm_lab.artifacts.checkpoint import read_checkpoint
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.train import train
from ddpm_lab.training.ema import EMA
from ddpm_lab.training.module import DiffusionModule
from helpers import TINY_TRAIN, run_cli

PROBE = "+callbacks.probe._target_=scale_probe.EMAProbe"  # this folder is on sys.path (and on PYTHONPATH below)
# Two steps, one checkpoint and one validation at the end, no sample grids.
SHORT = (
    *TINY_TRAIN,
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid=null",
)


def test_ema_decay_warms_up_to_its_target():
    ema = EMA(decay=0.9999)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(10**7) == 0.9999
    assert EMA(decay=0.99, warmup=False).decay_at(1) == 0.99
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.5)


def test_bf16_mixed_trains_finite_on_cpu_with_ema_sampling(image_folder, tmp_path, monkeypatch, cfg_train):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)  # wiring only; real compiles need time
    cfg = cfg_train(
        *SHORT,
        f"dataset.root={image_folder}",
        f"paths.output_dir={tmp_path}",
        "trainer.precision=bf16-mixed",
        "compile=true",
        PROBE,
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["val/loss"]])).all()
    assert len(compiled) == 1 and getattr(compiled[0], "__self__", None).__class__.__name__ == "UNet"

    probe = torch.load(tmp_path / "ema_probe_rank0.pt", weights_only=True)
    assert probe["precision"] == "bf16-mixed"
    assert probe["train_uses_ema"] == [True, True] and probe["val_uses_ema"] and all(probe["val_uses_ema"])

    # Checkpoints: the EMA average in state_dict, the raw weights beside it; load_model picks the average by default.
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)
    assert (
        set(ckpt["state_dict"]) == set(ckpt["current_model_state"]) and int(ckpt["averaging_state"]["n_averaged"]) == 2
    )
    ema_net, raw_net = load_model(last).net.state_dict(), load_model(last, weights="raw").net.state_dict()
    assert all(torch.equal(ema_net[k], probe["ema"][k]) for k in ema_net)
    assert any(not torch.equal(ema_net[k], raw_net[k]) for k in ema_net)


@pytest.mark.slow
def test_ddp_sim_trains_checkpoints_and_keeps_ema_identical(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    steps = (
        "trainer.max_steps=4",
        "callbacks.model_checkpoint.save_top_k=-1",
        "model.dropout=0.1",
        "dataset.flip=true",
    )
    run_cli(
        "ddpm_lab.train", *SHORT, *steps, "trainer=ddp_sim", f"dataset.root={image_folder}", PROBE, cwd=tmp_path,
        timeout=400,
    )  # fmt: skip
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    # What one process would hold: the module built from the stored config, key for key and shape for shape.
    net, diffusion, sampler = build_stored(ckpt["ddpm_lab"]["config"])
    single = DiffusionModule(net, diffusion, sampler, optimizer=torch.optim.AdamW).state_dict()
    for state in (ckpt["state_dict"], ckpt["current_model_state"]):
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in single.items()}
    ranks = ckpt["resume_state"]["ranks"]["rng_cpu"]
    assert ranks.shape[0] == 2 and not torch.equal(ranks[0], ranks[1])  # every rank's own stream, for an exact resume
    assert len(ckpt["resume_state"]["loaders"]) == 2  # and every rank's loader position

    probes = [torch.load(run / f"ema_probe_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(probes[0]["ema"][k], probes[1]["ema"][k]) for k in probes[0]["ema"])
    assert len(list((run / "tensorboard").glob("events.*"))) == 1  # logged from rank zero only


@pytest.mark.slow
def test_multirun_keeps_every_finished_job_and_names_the_non_finite_one(image_folder, tmp_path):
    proc = run_cli(
        "ddpm_lab.train",
        "-m",
        *SHORT,
        f"dataset.root={image_folder}",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "optimizer.lr=1e-3,1e30,2e-3",
        cwd=tmp_path,
        check=False,
        timeout=400,
    )
    assert proc.returncode != 0  # the sweep reports its failed job
    assert "NonFiniteLossError: train/loss is inf at step 2 (lr 1e+30, precision 32-true)" in proc.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1", "2"]
    assert "optimizer.lr=1e+30" in (jobs[1] / ".hydra" / "overrides.yaml").read_text()
    for job in (jobs[0], jobs[2]):  # the jobs around the failure ran to the end, each with its own TensorBoard run
        assert read_checkpoint(job / "checkpoints" / "last.ckpt")["global_step"] == 2
        assert list((job / "tensorboard").glob("events.*")) and (job / ".hydra" / "config.yaml").is_file()
    # The failed job kept its last good checkpoint (step 1), finite, instead of saving NaNs over it.
    kept = read_checkpoint(jobs[1] / "checkpoints" / "last.ckpt")
    assert kept["global_step"] == 1 and all(
        torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point()
    )


@pytest.mark.slow
def test_multirun_refuses_subprocess_ddp_at_once(image_folder, tmp_path):
    proc = run_cli(
        "ddpm_lab.train",
        "-m",
        *SHORT,
        "trainer=ddp_sim",
        f"dataset.root={image_folder}",
        "seed=1,2",
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0 and "multirun (-m) cannot start DDP processes itself" in proc.stderr
    assert not list(tmp_path.glob("outputs/multirun/*/*/checkpoints"))


def test_callbacks_put_weight_averaging_first(cfg_train):
    from ddpm_lab.train import _callbacks

    cfg = cfg_train(*SHORT, "dataset.root=unused", "paths.output_dir=unused")
    callbacks = _callbacks(cfg)
    assert isinstance(callbacks[0], WeightAveraging) and type(callbacks[-1]).__name__ == "PreemptionGuard"
