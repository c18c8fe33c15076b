"""Several processes on one CPU machine (gloo): ``evaluate devices=2`` (Lightning's launcher starts the second) and
``sample num_nodes=2`` (two processes started by hand as two nodes) write the files and scores of one device, bit
for bit; a failure after the processes started is one line, exit status 2, nothing left behind; two nodes train,
checkpoint, stop and resume, with the FID callback's sharded value equal to what one process computes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from ddpm_lab.evaluate import evaluate
from ddpm_lab.sample import sample
from helpers import TINY_TRAIN, cli_env, conditional_checkpoint, ours_checkpoint, run_cli, snapshot

MODEL = ("model=unet_tiny", "dataset=image_folder", "dataset.image_size=8", "schedule.timesteps=20")
# n=10 in batches of 4: rank 0 draws batches 0 and 1, rank 1 batch 2 (two images), so the shares are uneven
EVALUATE = ("n=10", "batch_size=4", "features=tiny", "sampler=ddim", "sampler.steps=3", "kid_subsets=5")
EVALUATE += ("bootstrap=4", "dataset=image_folder", "dataset.image_size=8", "device=cpu")


def quoted(path: Path) -> str:
    return f"'{path}'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(module: str, overrides: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """``python -m <module>`` started twice, as a user starts it on two machines: NODE_RANK 0 and 1, rank 0's
    address and port (each process starts at once: quicker than ``devices=2``, whose second process starts late)."""
    env = {**cli_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).parent)  # fid_probe
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *overrides],
            cwd=cwd,
            env={**env, "NODE_RANK": str(node)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=400) for p in procs]
    failed = {node: err[-3000:] for node, (p, (_, err)) in enumerate(zip(procs, outputs)) if p.returncode}
    assert not failed, failed
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    data = (*MODEL, f"dataset.root={image_folder}")
    return {
        "plain": ours_checkpoint(folder / "plain.ckpt", data),
        "conditional": conditional_checkpoint(folder / "conditional.ckpt", data),
    }


@pytest.mark.slow
def test_evaluate_on_two_processes_equals_one_bit_for_bit(checkpoints, image_folder, tmp_path, cfg_eval):
    common = (f"ckpt={quoted(checkpoints['plain'])}", *EVALUATE, f"dataset.root={quoted(image_folder)}")
    proc = run_cli(
        "ddpm_lab.evaluate", *common, "devices=2", f"paths.cache_dir={quoted(tmp_path / 'cache2')}", cwd=tmp_path
    )
    printed = [line for line in proc.stdout.splitlines() if not line.startswith("[")]  # not the log's lines
    assert len([line for line in printed if line.startswith("FID ")]) == 1  # rank 0 alone reports
    assert len([line for line in printed if line.startswith("real-vs-real floor")]) == 1
    assert not [line for line in proc.stdout.splitlines() if "train_ddp_process_1" in line]
    (two,) = (tmp_path / "outputs" / "evaluate").iterdir()
    one = tmp_path / "one"
    cfg = cfg_eval(*common, f"paths.output_dir={one}", f"paths.cache_dir={tmp_path / 'cache1'}")
    single = evaluate(cfg)
    shared = json.loads((two / "results.json").read_text())
    assert shared["processes"] == 2 and single["processes"] == 1
    differ = {k for k in single if single[k] != shared[k]}
    assert differ == {"sampling_seconds", "processes", "real_stats"}, differ  # FID, its spread, KID, floor: equal
    assert shared["fid_std"] > 0 and shared["floor"]["method"] == "disjoint"
    assert (two / "samples.png").read_bytes() == (one / "samples.png").read_bytes()
    # the real images' features, extracted in shares on two processes, are the ones one process extracts
    real = [
        torch.load(p, weights_only=True)["features"] for p in (Path(single["real_stats"]), Path(shared["real_stats"]))
    ]
    assert torch.equal(*real)
    # rank 1 wrote nothing but its log (Lightning's launcher names it)
    assert sorted(p.name for p in two.iterdir()) == [
        ".hydra",
        "evaluate.log",
        "results.json",
        "samples.png",
        "train_ddp_process_1.log",
    ]


@pytest.mark.slow
def test_sample_on_two_nodes_writes_the_files_of_one(checkpoints, tmp_path, cfg_sample):
    """Two processes started by hand as two nodes (``num_nodes=2``); a conditional checkpoint, 3 images of each of
    its 2 classes, guided: the labels are shared out too."""
    common = [f"ckpt={quoted(checkpoints['conditional'])}", "per_class=3", "guidance=2", "batch_size=4"]
    common += ["sampler=ddim", "sampler.steps=3", "device=cpu", "gif_frames=3"]
    zero, one_ = two_nodes("ddpm_lab.sample", [*common, "num_nodes=2", "paths.output_root=out"], tmp_path)
    printed = [line for line in zero.stdout.splitlines() + one_.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(printed) == 5  # the five outputs, printed once (by rank 0)
    (two,) = {p.parent for p in (tmp_path / "out" / "sample").glob("*/grid.png")}  # rank 0's run folder
    one = tmp_path / "one"
    sample(cfg_sample(*common, f"paths.output_dir={one}"))
    for name in ("grid.png", "progression.png", "reverse.gif"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    a, b = np.load(one / "samples.npz"), np.load(two / "samples.npz")
    assert a["arr_0"].shape == (6, 8, 8, 3) and np.array_equal(a["arr_0"], b["arr_0"])
    assert np.array_equal(a["labels"], b["labels"]) and a["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert snapshot(one / "samples") == snapshot(two / "samples")


@pytest.mark.slow
def test_a_failure_after_the_processes_started_is_one_line_and_leaves_nothing(checkpoints, tmp_path, image_folder):
    """``features=classifier`` on a folder of one class fails once the data is read, after rank 1 started."""
    lone = tmp_path / "one_class"
    (lone / "a").mkdir(parents=True)
    for image in sorted((image_folder / "a").iterdir())[:6]:
        (lone / "a" / image.name).write_bytes(image.read_bytes())
    before = snapshot(tmp_path)
    proc = run_cli(
        "ddpm_lab.evaluate",
        f"ckpt={quoted(checkpoints['plain'])}",
        *EVALUATE,
        "features=classifier",
        f"dataset.root={quoted(lone)}",
        f"paths.cache_dir={quoted(tmp_path / 'cache')}",
        "devices=2",
        cwd=tmp_path,
        check=False,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        "error: features=classifier needs images of at least two labelled classes, but ImageFolderDataModule at "
        f"{lone} has 1 (an image folder labels images by class sub-folder): use features=tiny or features=inception"
    ], proc.stderr[-3000:]
    after = {k for k in snapshot(tmp_path) if not k.startswith("cache")}
    assert after == set(before), after - set(before)  # no run folder, no train_ddp_process_1.log


@pytest.mark.slow
def test_two_nodes_train_checkpoint_and_resume_with_a_sharded_fid(image_folder, tmp_path):
    fid = ("callbacks=fid", "features@callbacks.fid.features=tiny", "callbacks.fid.every_n_steps=2")
    fid += ("callbacks.fid.n=8", "callbacks.fid.batch_size=4", "callbacks.fid.sampler.steps=3")
    overrides = [
        *TINY_TRAIN,
        f"dataset.root={image_folder}",
        "trainer=ddp_sim",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.sample_grid=null",
        *fid,
    ]
    two_nodes("ddpm_lab.train", overrides, tmp_path)
    (run,) = {p.parent for p in (tmp_path / "outputs" / "train").glob("*/checkpoints")}  # rank 0's run folder
    first = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 2
    assert "step 2: FID" in (run / "train.log").read_text()

    # resume on both nodes; the probe (typed now: a resume replays no added keys) records the sharded FID at step 4
    probe = "+callbacks.fid_probe._target_=fid_probe.FIDProbe"
    two_nodes("ddpm_lab.train", [f"resume={quoted(run)}", "trainer.max_steps=4", probe], tmp_path)
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4  # rank 1 restored its own state too (a row of the saved states)
    weights = [first["state_dict"], last["state_dict"]]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    probes = [json.loads(p.read_text()) for p in sorted((tmp_path / "outputs").rglob("fid_probe_rank*.json"))]
    assert [p["world"] for p in probes] == [2, 2]
    for seen in probes:
        step = seen["steps"]["4"]
        assert step["shared"] == step["alone"]  # each rank drew half, the gathered FID is the one-process value
        assert step["shared"]["n_fake"] == 8 and step["logged"] == pytest.approx(step["alone"]["fid"], rel=1e-6)
    assert probes[0]["steps"]["4"]["shared"] == probes[1]["steps"]["4"]["shared"]  # every rank logs the same value
