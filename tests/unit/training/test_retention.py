"""Which checkpoints a resumed run keeps (``RunCheckpoint``): the record a checkpoint carries names files in the
callback's own folder only, and a smaller ``save_top_k`` applies from the first step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from ddpm_lab.training import RunCheckpoint


def periodic(folder: Path, keep: int) -> RunCheckpoint:
    return RunCheckpoint(dirpath=folder, filename="step_{step:07d}", monitor="step", mode="max", save_top_k=keep)


def saved(folder: Path, steps: list[int]) -> dict[str, torch.Tensor]:
    """Checkpoint files of these steps in ``folder``, as the record of a callback that kept them all."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {}
    for step in steps:
        path = folder / f"step_{step:07d}.ckpt"
        path.write_bytes(b"ckpt")
        record[str(path)] = torch.tensor(float(step))
    return record


class Strategy:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove_checkpoint(self, path: str) -> None:
        self.removed.append(path)
        Path(path).unlink()


def start(callback: RunCheckpoint, resumed_from: Path | None = None) -> Strategy:
    strategy = Strategy()
    callback.on_train_start(SimpleNamespace(strategy=strategy, ckpt_path=resumed_from), None)
    return strategy


def test_it_restores_the_state_lightning_wrote_for_model_checkpoint(tmp_path: Path):
    ours = RunCheckpoint(dirpath=tmp_path, monitor="step", mode="max", every_n_train_steps=3)
    lightnings = ModelCheckpoint(dirpath=tmp_path, monitor="step", mode="max", every_n_train_steps=3)
    assert ours.state_key == lightnings.state_key and ours.state_key.startswith("ModelCheckpoint{")


def test_a_smaller_save_top_k_on_resume_prunes_the_oldest_at_the_first_step(tmp_path: Path):
    folder = tmp_path / "checkpoints"
    state = periodic(folder, 5).state_dict() | {"best_k_models": saved(folder, [3, 6, 9, 12])}
    callback = periodic(folder, 2)
    callback.load_state_dict(state)
    strategy = start(callback, resumed_from=folder / "last.ckpt")
    assert sorted(Path(p).name for p in strategy.removed) == ["step_0000003.ckpt", "step_0000006.ckpt"]
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000009.ckpt", "step_0000012.ckpt"]
    assert Path(callback.kth_best_model_path).name == "step_0000009.ckpt" and len(callback.best_k_models) == 2
    assert Path(callback.best_model_path).name == "step_0000012.ckpt"


def test_a_moved_run_keeps_pruning_its_own_files(tmp_path: Path):
    """Lightning restores nothing when ``dirpath`` changed (a moved or copied run): its files would never go."""
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    record = saved(old, [3, 6, 9])
    saved(new, [3, 6, 9])
    callback = periodic(new, 1)
    callback.load_state_dict(periodic(old, 5).state_dict() | {"dirpath": str(old), "best_k_models": record})
    start(callback)
    assert [p.name for p in new.iterdir()] == ["step_0000009.ckpt"]
    assert sorted(p.name for p in old.iterdir()) == ["step_0000003.ckpt", "step_0000006.ckpt", "step_0000009.ckpt"]


def test_a_hostile_record_names_nothing_outside_the_folder(tmp_path: Path):
    """A shared run's checkpoint may name any path in ``best_k_models``/``last_model_path``: Lightning would
    delete them when it prunes (``checkpoints/../../victim.ckpt`` counts as inside the folder for it)."""
    folder, victim = tmp_path / "run" / "checkpoints", tmp_path / "victim.ckpt"
    victim.write_bytes(b"someone else's")
    record = saved(folder, [3])
    (tmp_path / "run" / "elsewhere.ckpt").write_bytes(b"not in the checkpoint folder")
    folder.joinpath("linked.ckpt").symlink_to(victim)
    record |= {
        str(folder / ".." / ".." / "victim.ckpt"): torch.tensor(1.0),
        str(victim): torch.tensor(2.0),
        str(folder / "linked.ckpt"): torch.tensor(4.0),
        str(folder.parent / "elsewhere.ckpt"): torch.tensor(5.0),
        str(folder / "missing.ckpt"): torch.tensor(6.0),
        str(folder / "step_0000003.ckpt") + "x": "not a score",
    }
    callback = periodic(folder, 0)
    callback.load_state_dict(
        periodic(folder, 5).state_dict() | {"best_k_models": record, "last_model_path": str(victim)}
    )
    assert list(callback.best_k_models) == [str(folder / "step_0000003.ckpt")] and callback.last_model_path == ""
    start(callback)
    assert victim.read_bytes() == b"someone else's" and (tmp_path / "run" / "elsewhere.ckpt").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["linked.ckpt"]  # save_top_k=0: its own file went
