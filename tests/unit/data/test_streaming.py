"""dataset=streaming (data/datasets/streaming.py) and the shards it reads (data/shards.py, ``python -m
ddpm_lab.shards``): written from any dataset with its classes, size and validation images; every image read back;
ranks get disjoint shuffled images; a run stopped mid-epoch and resumed ends bit for bit as the uninterrupted one;
mismatched, missing, unfinished or foreign shards and a missing litdata are one line each."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from litdata.utilities.env import _DistributedEnv

from data_helpers import fake_trainer, folder_module
from ddpm_lab.artifacts.checkpoint import read_checkpoint
from ddpm_lab.data import StreamingDataModule
from ddpm_lab.data.shards import INFO_NAME, ShardInfo, write_shards
from ddpm_lab.errors import DatasetError, OutputExistsError
from ddpm_lab.shards import shards
from ddpm_lab.train import train
from helpers import TINY_TRAIN, compose_config, write_image_folder

# TINY_TRAIN on the shards instead of an image folder: 40 training images, batches of 8, so 5 steps an epoch.
STREAM = (
    *(o for o in TINY_TRAIN if not o.startswith("dataset=")),
    "dataset=streaming",
    *(f"callbacks.{name}=null" for name in ("sample_grid", "diffusion_strips", "run_summary")),  # seconds of plots
)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image folder (2 classes x 24 images, 20 px) and its shards at 16 px, 8 images held out: (folder, shards)."""
    tmp = tmp_path_factory.mktemp("streaming")
    folder = write_image_folder(tmp / "images")
    out = tmp / "shards"
    cfg = compose_config(
        "shards", ["dataset=image_folder", f"dataset.root={folder}", "dataset.image_size=16", "dataset.val_size=8"]
    )
    cfg.out = str(out)
    assert shards(cfg) == str(out)
    return folder, out


def streaming(root: Path, **kwargs) -> StreamingDataModule:
    dm = StreamingDataModule(root=str(root), **{"image_size": 16, "channels": 3, "batch_size": 8, **kwargs})
    dm.setup("fit")
    return dm


def test_shards_hold_the_split_its_classes_and_validation_images(written) -> None:
    folder, out = written
    info = json.loads((out / INFO_NAME).read_text())
    assert (info["image_size"], info["channels"], info["class_names"], info["train"], info["val"]) == (
        16,
        3,
        ["a", "b"],
        40,
        8,
    )
    dm = streaming(out)
    source = folder_module(folder, val_size=8)  # what training on the folder itself holds out and trains on
    assert dm.class_names == ["a", "b"] and (len(dm.train_images), len(dm.val_images)) == (40, 8)
    assert torch.equal(dm.train_images[:], source.train_images[:])  # written in order, read back by index
    assert torch.equal(dm.train_labels, source.train_labels) and torch.equal(dm.val_images[:], source.val_images[:])
    served = torch.cat([images for images, _ in dm.train_dataloader()])
    assert served.dtype == torch.uint8 and served.shape == (40, 3, 16, 16)
    assert not torch.equal(served, source.train_images[:])  # shuffled ...
    assert sorted(map(bytes, served.flatten(1).numpy())) == sorted(
        map(bytes, source.train_images[:].flatten(1).numpy())
    )
    images, labels = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.dtype == torch.float32 and -1 <= images.min() < images.max() <= 1 and labels.dtype == torch.long


def test_two_ranks_on_two_nodes_read_disjoint_shuffled_images(written, monkeypatch) -> None:
    _, out = written
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls, r=rank: cls(2, r, 2)))
        dm = streaming(out)
        dm.trainer = fake_trainer(world_size=2, global_rank=rank)  # batches of 8 / 2 ranks
        seen.append(torch.cat([images for images, _ in dm.train_dataloader()]).flatten(1))
    together = torch.cat(seen)
    assert len(seen[0]) == len(seen[1]) == 20 and len(torch.unique(together, dim=0)) == 40  # the epoch, no overlap


def _last(run: Path) -> dict:
    return read_checkpoint(run / "checkpoints" / "last.ckpt")


def test_a_run_stopped_mid_epoch_and_resumed_ends_bit_for_bit_as_the_uninterrupted_one(written, cfg_train, tmp_path):
    _, out = written

    def run(name: str, steps: int, *extra: str) -> dict:
        folder = tmp_path / name
        overrides = (*STREAM, f"dataset.root={out}", f"trainer.max_steps={steps}", f"paths.output_dir={folder}")
        train(cfg_train(*overrides, "+trainer.limit_val_batches=0", *extra))
        return read_checkpoint(folder / "checkpoints" / "last.ckpt")

    whole = run("whole", 7)
    stopped = run("part", 3)  # step 3 of 5: mid-epoch
    (loader,) = stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # litdata's state, kept by Lightning
    assert loader["num_samples_yielded"] == 3 * 8 and loader["current_epoch"] == 1
    resumed = run("part", 7, f"ckpt_path={tmp_path / 'part' / 'checkpoints' / 'last.ckpt'}")  # into epoch 2
    assert whole["global_step"] == resumed["global_step"] == 7
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key
    assert not all(torch.equal(whole["state_dict"][k], stopped["state_dict"][k]) for k in whole["state_dict"])


def test_shards_that_do_not_fit_the_config_are_refused_in_one_line(written, tmp_path) -> None:
    _, out = written
    cases = {
        "dataset.image_size=32 but the shards in": {"image_size": 32},
        "dataset.channels=1 but the shards in": {"channels": 1},
    }
    for message, kwargs in cases.items():
        with pytest.raises(DatasetError, match=message) as e:
            streaming(out, **kwargs)
        assert "\n" not in str(e.value) and "set dataset." in str(e.value)
    (tmp_path / "unfinished" / "train").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / INFO_NAME).write_text(json.dumps({"image_size": 16}))
    newer = tmp_path / "newer"
    newer.mkdir()
    info = ShardInfo(16, 3, None, 1, 0, "x", format=2).__dict__
    (newer / INFO_NAME).write_text(json.dumps(info))
    for root, message in {
        tmp_path / "missing": "is not a folder of shards: write them with python -m ddpm_lab.shards",
        tmp_path / "empty": "holds no shards",
        tmp_path / "unfinished": "is unfinished (no ddpm_lab.json)",
        foreign: "is not a ddpm_lab shard description (not the expected fields)",
        newer: "was written by a newer ddpm_lab (shard format 2",
    }.items():
        with pytest.raises(DatasetError, match=re.escape(message)):
            streaming(root)


def test_without_litdata_one_line_says_how_to_install_it(written, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)  # import litdata now raises ImportError
    with pytest.raises(
        DatasetError, match=r'needs litdata, which is not installed: pip install "ddpm_lab\[streaming\]"'
    ):
        streaming(written[1])


def test_writing_refuses_a_used_folder_and_a_failed_write_leaves_nothing(written, tmp_path, monkeypatch) -> None:
    images, labels = torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    info = ShardInfo(16, 3, None, 4, 0, "test")
    with pytest.raises(OutputExistsError, match="already exists and is not empty"):
        write_shards({"train": (images, labels)}, info, str(written[1]), "1MB", 1)
    import litdata

    def broken(**kwargs):
        Path(kwargs["output_dir"]).mkdir(parents=True)
        (Path(kwargs["output_dir"]) / "chunk-0-0.bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(litdata, "optimize", broken)
    with pytest.raises(OSError, match="disk full"):
        write_shards({"train": (images, labels)}, info, str(tmp_path / "new"), "1MB", 1)
    assert not (tmp_path / "new").exists()
