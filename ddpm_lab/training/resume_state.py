"""What a checkpoint holds beyond Lightning's own state, so that a resumed run continues exactly as the run never
stopped: every rank's random streams, loss history and train-loader position.

Lightning checkpoints the loops, optimizer, lr scheduler, callbacks and rank zero's train-loader state (any loader
with ``state_dict``/``load_state_dict``, e.g. :class:`ddpm_lab.data.InMemoryLoader`). What it leaves out is kept
here, in ``checkpoint["resume_state"]``, gathered from every rank (each DDP rank draws its own noise):

- ``ranks``: per rank, the torch CPU (and CUDA) generator states, the source of every random number a training step
  draws (t, ε, label dropout, dropout masks, flips), and the importance sampler's loss history;
- ``loaders``: per rank, the states Lightning stores for rank zero alone; each rank gets its own back;
- ``shape``: world size, global batch size and gradient accumulation, to notice a resume that changes them;
- ``validation_cut``: the stop came between two validation batches; Lightning's record of that validation is
  rewritten as begun with no batch done, so the resumed run runs all of it again (and saves the periodic
  checkpoint that waited for it), as the run never stopped did.

A new train loader plugs in by having ``state_dict()`` (what it has served, as of the end of the batch the step ran
on) and ``load_state_dict(state)`` (the next ``iter()`` goes on from there); nothing here names a loader class.
It should also have ``__len__``: Lightning reads a loader without a length one batch ahead (to find the epoch's
end), so its state would count a batch no step has used yet.

A resume with another world size, batch size or accumulation continues (loader positions are converted by the
loader, fresh random streams where ranks do not match) and warns once that it is not bit-exact. Checkpoints written
before this module held only ``rng_states`` (the generator states); they still resume.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from ddpm_lab.diffusion.importance import LossHistory
from ddpm_lab.errors import CheckpointError

RESUME_KEY = "resume_state"
LEGACY_RNG_KEY = "rng_states"  # checkpoints of ddpm_lab <= 0.2: {"cpu": (W, n), "cuda": (W, n)} uint8
SHAPE_KEYS = ("world_size", "batch_size", "accumulate_grad_batches")


def run_shape(trainer: pl.Trainer) -> dict[str, int | None]:
    """What a bit-exact continuation needs unchanged: processes, global batch, batches per optimizer step."""
    batch = getattr(trainer.datamodule, "batch_size", None)
    return {
        "world_size": int(trainer.world_size),
        "batch_size": int(batch) if isinstance(batch, int) else None,
        "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
    }


def _fit_loop(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Lightning's fit-loop entry (its progress counters, and under ``state_dict`` the train loaders' states)."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    return loop if isinstance(loop, dict) else {}


def _fit_loop_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    state = _fit_loop(checkpoint).get("state_dict")
    return state if isinstance(state, dict) else None


def _gather(module: pl.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank stacked as (world_size, ...) on the CPU."""
    if module.trainer.world_size == 1:
        return tensor[None].clone()
    return module.all_gather(tensor.to(module.device)).cpu()


def _gather_objects(trainer: pl.Trainer, obj: Any) -> list[Any]:
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


VAL_PROGRESS = "epoch_loop.val_loop.batch_progress"  # Lightning's progress of the validation inside fit


def _restart_validation(fit_loop: dict[str, Any]) -> bool:
    """Record a validation cut short (SIGTERM between its batches) as begun but with no batch done, so that the
    resumed run runs all of it again. Lightning would resume it at the batch it reached, on a new loader (the
    first batch again, numbered as the next) or skip it, and log another ``val/loss`` than the run never stopped.
    Whether there was such a validation."""
    progress = fit_loop.get(VAL_PROGRESS)
    if not isinstance(progress, dict) or not {"total", "current"} <= progress.keys():
        return False
    if progress.get("is_last_batch") or not progress["current"].get("started"):
        return False  # ran to its end (e.g. a checkpoint of on_validation_end), or none has begun since the last
    begun = {"ready": 1, "started": 1, "processed": 0, "completed": 0}  # Lightning's "restarted mid-evaluation"
    done = progress["current"]
    progress["total"] = {key: progress["total"][key] - done[key] + begun[key] for key in begun}
    progress["current"] = dict(begun)
    progress["is_last_batch"] = False
    return True


def _save_after_validation(trainer: pl.Trainer, step: int) -> None:
    """A periodic checkpoint due at ``step`` waits for that step's validation (ModelCheckpoint defers it to
    ``on_validation_end``, and does not keep that in its state): when the validation was cut short and is run
    again after the resume, the checkpoint is saved then, as it would have been."""
    for callback in trainer.checkpoint_callbacks:
        every = getattr(callback, "_every_n_train_steps", 0)
        if every and step % every == 0 and hasattr(callback, "_defer_save_until_validation"):
            callback._defer_save_until_validation = True


def save_resume_state(
    module: pl.LightningModule,
    checkpoint: dict[str, Any],
    loss_history: LossHistory | None,
) -> None:
    """Write ``checkpoint["resume_state"]`` (on every rank: it gathers from all of them)."""
    trainer = module.trainer
    ranks = {"rng_cpu": torch.get_rng_state()}
    if module.device.type == "cuda":
        ranks["rng_cuda"] = torch.cuda.get_rng_state(module.device)
    if loss_history is not None:
        ranks["loss_history"], ranks["loss_counts"] = loss_history.history, loss_history.counts
    fit_loop = _fit_loop_state(checkpoint)
    loaders = fit_loop.get("combined_loader") if fit_loop is not None else None
    validation_cut = _restart_validation(_fit_loop(checkpoint))
    checkpoint[RESUME_KEY] = {
        "shape": run_shape(trainer),
        "ranks": {key: _gather(module, value) for key, value in ranks.items()},
        "loaders": _gather_objects(trainer, loaders) if loaders else None,
        "validation_cut": validation_cut,
    }


def check_resume_state(checkpoint: dict[str, Any], path: object) -> None:
    """Refuse (CheckpointError) a ``resume_state`` that is not what :func:`save_resume_state` writes: the file is
    read from disk, and a damaged entry must stop the launch before any work, not deep inside ``fit``."""
    state = checkpoint.get(RESUME_KEY)
    if state is not None and not _well_formed(state):
        raise CheckpointError(f"{path}: its '{RESUME_KEY}' entry is damaged (not what ddpm_lab.train writes)")


def _well_formed(state: Any) -> bool:
    if not (isinstance(state, dict) and isinstance(state.get("ranks"), dict) and isinstance(state.get("shape"), dict)):
        return False
    ranks, shape = state["ranks"], state["shape"]
    rng = ranks.get("rng_cpu")
    if not (torch.is_tensor(rng) and rng.dtype == torch.uint8 and rng.shape[1:] == torch.get_rng_state().shape):
        return False
    if not all(torch.is_tensor(v) and v.dim() >= 1 and len(v) == len(rng) for v in ranks.values()):
        return False
    history, counts = ranks.get("loss_history"), ranks.get("loss_counts")
    if (history is None) != (counts is None):
        return False
    if history is not None and not (
        history.dim() == 3 and history.is_floating_point() and counts.shape == history.shape[:2]
        and not counts.is_floating_point() and bool(((counts >= 0) & (counts <= history.shape[2])).all())
    ):  # fmt: skip
        return False
    sizes = [shape.get(key) for key in SHAPE_KEYS]
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) for v in sizes):
        return False
    loaders = state.get("loaders")
    if loaders is not None and not (isinstance(loaders, list) and len(loaders) == shape.get("world_size")):
        return False
    return isinstance(state.get("validation_cut", False), bool)


def _changes(saved: dict[str, Any], now: dict[str, int | None]) -> list[str]:
    return [
        f"{key} {now[key]} (was {saved[key]})"
        for key in SHAPE_KEYS
        if saved.get(key) is not None and now[key] is not None and saved[key] != now[key]
    ]


def restore_resume_state(
    module: pl.LightningModule, checkpoint: dict[str, Any], loss_history: LossHistory | None
) -> None:
    """Give this rank its own streams, loss history and loader state back (before Lightning restores its loops).
    Warns once when the run's shape changed (not bit-exact then)."""
    trainer, rank = module.trainer, module.global_rank
    state = checkpoint.get(RESUME_KEY)
    if state is None:  # an older checkpoint: the generator states alone
        legacy = checkpoint.get(LEGACY_RNG_KEY) or {}
        state = {"shape": {}, "ranks": {f"rng_{k}": v for k, v in legacy.items()}, "loaders": None}
    ranks = state["ranks"]
    changes = _changes(state["shape"], run_shape(trainer))
    if changes:
        rank_zero_warn(
            f"resuming with {', '.join(changes)}: the run continues, but not bit-exactly as it would have "
            "without the stop (batches and random streams are split differently)"
        )
    same_ranks = "rng_cpu" in ranks and len(ranks["rng_cpu"]) == trainer.world_size
    if same_ranks:  # otherwise this launch's seeding stays (other ranks, other streams)
        # clone: row r > 0 of the (world, n) tensor is a view at an offset, which set_rng_state reads wrongly (a
        # segmentation fault on every rank but 0 with torch 2.14)
        torch.set_rng_state(ranks["rng_cpu"][rank].clone())
        if "rng_cuda" in ranks and module.device.type == "cuda":
            torch.cuda.set_rng_state(ranks["rng_cuda"][rank].clone(), module.device)
    if loss_history is not None and "loss_history" in ranks:
        saved = len(ranks["loss_history"])
        history, counts = ranks["loss_history"][rank % saved], ranks["loss_counts"][rank % saved]
        if history.shape == loss_history.history.shape:
            loss_history.history.copy_(history)
            loss_history.counts.copy_(counts)
    if state.get("validation_cut"):
        _save_after_validation(trainer, int(checkpoint.get("global_step", 0)))
    fit_loop = _fit_loop_state(checkpoint)
    if same_ranks and state.get("loaders") and fit_loop is not None:
        fit_loop["combined_loader"] = state["loaders"][rank]  # Lightning loads it into this rank's loader
