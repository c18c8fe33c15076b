"""Post-hoc EMA on disk: the snapshots training writes, the tracked averages a checkpoint holds, and the
checkpoints of averages of any length reconstructed from them afterwards (EDM2; the math is
:mod:`ddpm_lab.models.power_ema`). Plain PyTorch.

During training (``callbacks=posthoc_ema``) every ``every_n_steps`` steps one file
``<run>/posthoc_ema/snapshot_<step>.pt`` holds the power-function averages of all tracked σ_rel at that step, written
atomically; checkpoints hold the averages of their own step (``checkpoint["callbacks"]["PosthocEMA"]``, with the run's
id and the steps of the snapshots written so far). :func:`write_posthoc_checkpoints` combines the snapshots up to a
checkpoint's step, and that checkpoint's own averages, into one checkpoint per asked-for σ_rel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import POSTHOC_KEY, averaged_checkpoint, checkpoint_config, read_checkpoint
from ddpm_lab.artifacts.trained_model import net_weights
from ddpm_lab.errors import CheckpointError, ConfigError, OutputExistsError
from ddpm_lab.models.power_ema import PosthocFit, check_sigma_rels, posthoc_coefficients, sigma_rel_to_gamma

__all__ = [
    "Averages",
    "SNAPSHOTS",
    "STATE_KEY",
    "Tracked",
    "find_inputs",
    "output_name",
    "read_snapshot",
    "reconstruct",
    "snapshot_path",
    "tracked_state",
    "write_posthoc_checkpoints",
    "write_snapshot",
]

log = logging.getLogger(__name__)

STATE_KEY = "PosthocEMA"  # the callback's entry in a checkpoint's "callbacks"
SNAPSHOT_KEY = "posthoc_ema"  # what a snapshot file holds besides its averages
SNAPSHOT_FORMAT = 1
SNAPSHOTS = "posthoc_ema"  # the folder under the run folder (configs/callbacks/posthoc_ema.yaml)


def snapshot_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"snapshot_{step:07d}.pt"


def output_name(sigma_rel: float, step: int) -> str:
    """``ema_0.05_step_0001350.ckpt``: the checkpoint of EMA length ``sigma_rel`` at training step ``step``."""
    return f"ema_{sigma_rel:g}_step_{step:07d}.ckpt"


def cpu_profiles(profiles: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Copies of the averages on the CPU in the standard layout (what files and checkpoints store)."""
    return [{k: v.detach().to("cpu", copy=True).contiguous() for k, v in p.items()} for p in profiles]


def write_snapshot(
    folder: str | os.PathLike,
    step: int,
    run_id: str,
    sigma_rels: Sequence[float],
    profiles: Sequence[dict[str, torch.Tensor]],
) -> Path:
    """Write one snapshot (the averages of every σ_rel at ``step``) atomically; returns its path."""
    path = snapshot_path(folder, step)
    meta = {
        "format": SNAPSHOT_FORMAT,
        "run_id": run_id,
        "step": int(step),
        "sigma_rels": [float(s) for s in sigma_rels],
    }
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save({SNAPSHOT_KEY: meta, "profiles": cpu_profiles(profiles)}, f)
    return path


@dataclass(frozen=True)
class Averages:
    """Power-function averages at one training step: one ``name -> tensor`` mapping per σ_rel."""

    step: int
    sigma_rels: tuple[float, ...]
    profiles: list[dict[str, torch.Tensor]]
    where: str  # the file they come from, for messages


def _check_averages(raw: Any, where: str) -> tuple[int, tuple[float, ...], list[dict[str, torch.Tensor]]]:
    """(step, σ_rels, profiles) of a snapshot's or a checkpoint's entry, every type checked (untrusted input)."""
    meta = raw.get(SNAPSHOT_KEY, raw) if isinstance(raw, dict) else None
    profiles = raw.get("profiles") if isinstance(raw, dict) else None
    step = meta.get("step") if isinstance(meta, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(f"{where} holds no valid post-hoc EMA step ({step!r:.40}): it is damaged")
    try:
        sigma_rels = check_sigma_rels(meta.get("sigma_rels"), "sigma_rels")
    except ConfigError as e:
        raise CheckpointError(f"{where} holds no valid list of EMA lengths: {e}") from None
    if (
        not isinstance(profiles, list)
        or len(profiles) != len(sigma_rels)
        or not all(isinstance(p, dict) and all(isinstance(v, torch.Tensor) for v in p.values()) for p in profiles)
    ):
        raise CheckpointError(f"{where} does not hold one mapping of tensors per EMA length: it is damaged")
    return step, sigma_rels, profiles


def read_snapshot(path: Path, run_id: str) -> Averages:
    """One snapshot file, read with ``weights_only=True`` (mapped, not loaded), refused when damaged or another
    run's."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated, not a torch file, or a pickle carrying code
        raise CheckpointError(
            f"cannot read post-hoc EMA snapshot {path} safely ({type(e).__name__}): delete it to reconstruct from the "
            "others"
        ) from e
    step, sigma_rels, profiles = _check_averages(raw, str(path))
    other = raw[SNAPSHOT_KEY].get("run_id")
    if other != run_id:
        raise CheckpointError(
            f"snapshot {path} belongs to another run (id {other!r:.20}, the checkpoint's is {run_id!r}): "
            "keep each run's snapshots in its own folder, or pass that run's checkpoint"
        )
    return Averages(step, sigma_rels, profiles, str(path))


@dataclass(frozen=True)
class Tracked:
    """What a checkpoint trained with post-hoc EMA holds about it: the run's id, the averages at the checkpoint's
    step, and the steps of the snapshots written up to then."""

    run_id: str
    averages: Averages
    snapshot_steps: tuple[int, ...]
    folder: str | None  # where training wrote the snapshots (callbacks.posthoc_ema.folder)


def tracked_state(ckpt: dict[str, Any], path: str | os.PathLike) -> Tracked:
    """The post-hoc EMA state of a (read) checkpoint; one line when it was trained without it."""
    state = (ckpt.get("callbacks") or {}).get(STATE_KEY) if isinstance(ckpt.get("callbacks"), dict) else None
    if isinstance(ckpt.get(POSTHOC_KEY), dict):
        raise CheckpointError(
            f"{path} is itself a post-hoc EMA checkpoint (sigma_rel={ckpt[POSTHOC_KEY].get('sigma_rel')!r:.12}): "
            "pass the run's training checkpoint (<run>/checkpoints/last.ckpt)"
        )
    if not state:
        raise CheckpointError(
            f"{path} holds no post-hoc EMA snapshots: it was not trained with callbacks=posthoc_ema (its EMA "
            "weights, if any, are the classic EMA's: sample or evaluate it directly)"
        )
    step, sigma_rels, profiles = _check_averages(state, f"{path} (post-hoc EMA state)")
    run_id, steps, folder = state.get("run_id"), state.get("snapshots"), state.get("folder")
    if not isinstance(run_id, str) or not isinstance(steps, list) or not all(type(s) is int for s in steps):
        raise CheckpointError(f"{path}: its post-hoc EMA state is damaged (no run id or snapshot list)")
    averages = Averages(step, sigma_rels, profiles, str(path))
    return Tracked(run_id, averages, tuple(s for s in steps if s <= step), folder if isinstance(folder, str) else None)


def check_fits(averages: Averages, reference: dict[str, torch.Tensor]) -> None:
    """Refuse averages whose tensors differ in name or shape from the checkpoint's own."""
    for profile in averages.profiles:
        if set(profile) != set(reference):
            example = sorted(set(profile) ^ set(reference))[0]
            raise CheckpointError(
                f"{averages.where} averages other weights than the checkpoint (e.g. {example}): it comes from a run "
                "of another model; keep each run's snapshots in its own folder"
            )
        for name, tensor in profile.items():
            if tensor.shape != reference[name].shape:
                raise CheckpointError(
                    f"{averages.where}: {name} has shape {tuple(tensor.shape)}, the checkpoint's "
                    f"{tuple(reference[name].shape)}: it comes from a run of another model"
                )


@dataclass(frozen=True)
class Reconstruction:
    """Where the inputs of one reconstruction are: the checkpoint, its averages and its snapshot files."""

    ckpt: dict[str, Any]
    path: Path
    tracked: Tracked
    folder: Path  # the snapshots' folder
    snapshots: list[Path]


def find_inputs(path: str | os.PathLike, snapshots: str | os.PathLike | None = None) -> Reconstruction:
    """Read ``path`` and locate the snapshots its state lists: in ``snapshots``, else ``<run>/posthoc_ema`` beside
    the checkpoint's folder (a run folder moved or copied whole), else where training wrote them. Listed snapshots
    that are gone are left out with a warning."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    tracked = tracked_state(ckpt, path)
    folder = Path(snapshots).expanduser() if snapshots else path.resolve().parent.parent / SNAPSHOTS
    if not snapshots and not folder.is_dir() and tracked.folder and Path(tracked.folder).is_dir():
        folder = Path(tracked.folder)
    if tracked.snapshot_steps and not folder.is_dir():
        raise ConfigError(
            f"the snapshots of {path} are not in {folder} (not a folder): pass snapshots=<the run's posthoc_ema folder>"
        )
    files = [snapshot_path(folder, s) for s in tracked.snapshot_steps if s < tracked.averages.step]
    missing = [f for f in files if not f.is_file()]
    if missing:
        log.warning(
            "%d of the %d snapshots %s lists are not in %s (e.g. %s): reconstructing from the others",
            len(missing),
            len(files),
            path.name,
            folder,
            missing[0].name,
        )
    return Reconstruction(ckpt, path, tracked, folder, [f for f in files if f.is_file()])


def fits(steps: Sequence[int], gammas: Sequence[float], step: int, sigma_rels: Sequence[float]) -> list[PosthocFit]:
    return [posthoc_coefficients(steps, gammas, step, sigma_rel_to_gamma(s)) for s in sigma_rels]


def reconstruct(
    inputs: Reconstruction, sigma_rels: Sequence[float]
) -> tuple[list[dict[str, torch.Tensor]], list[PosthocFit], list[int]]:
    """The averaged weights of each ``sigma_rels`` at the checkpoint's step: Σ_i x_i · average_i over every snapshot
    average and the checkpoint's own (float64 sums, one snapshot file mapped at a time). Returns the weights,
    the fits and the snapshot steps used."""
    tracked = inputs.tracked
    reference = tracked.averages.profiles[0]
    sources = [read_snapshot(f, tracked.run_id) for f in inputs.snapshots] + [tracked.averages]
    for source in sources:
        check_fits(source, reference)
    steps = [s.step for s in sources for _ in s.sigma_rels]
    gammas = [sigma_rel_to_gamma(r) for s in sources for r in s.sigma_rels]
    solved = fits(steps, gammas, tracked.averages.step, sigma_rels)
    sums = [{k: torch.zeros(v.shape, dtype=torch.float64) for k, v in reference.items()} for _ in sigma_rels]
    column = 0
    for source in sources:
        for profile in source.profiles:
            for fit, total in zip(solved, sums):
                x = float(fit.coefficients[column])
                for name, tensor in profile.items():
                    total[name].add_(tensor.double(), alpha=x)
            column += 1
    weights = [{k: v.to(reference[k].dtype) for k, v in total.items()} for total in sums]
    return weights, solved, [s.step for s in sources]


def check_output_folder(folder: Path) -> None:
    """Refuse an output folder that is a file or cannot be created or written (before any work)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write into {folder}: {existing} is a file, not a folder; pass out=<folder>")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into {folder}: {existing} is not writable; pass out=<folder>")


def write_posthoc_checkpoints(
    ckpt: str | os.PathLike,
    sigma_rels: Sequence[float],
    snapshots: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> list[Path]:
    """One checkpoint per ``sigma_rels`` (``out/ema_<σ_rel>_step_<step>.ckpt``; ``out`` defaults to the snapshots'
    folder), loadable like any other: the reconstructed average in ``state_dict``, the raw weights beside it.
    Every refusal comes before anything is written; existing files are never overwritten."""
    sigma_rels = check_sigma_rels(sigma_rels, "sigma_rel")
    inputs = find_inputs(ckpt, snapshots)
    step = inputs.tracked.averages.step
    folder = Path(out).expanduser() if out else inputs.folder
    check_output_folder(folder)
    targets = [folder / output_name(s, step) for s in sigma_rels]
    taken = [t for t in targets if t.exists()]
    if taken:
        raise OutputExistsError(f"{taken[0]} already exists: nothing was written; pass out=<another folder>")
    config = checkpoint_config(inputs.ckpt, inputs.path)
    raw = net_weights(inputs.ckpt, "raw", inputs.path)
    weights, solved, used = reconstruct(inputs, sigma_rels)
    written = []
    for sigma_rel, averaged, fit, target in zip(sigma_rels, weights, solved, targets):
        net = {k[len("net.") :]: v for k, v in averaged.items() if k.startswith("net.")}
        state = {**raw, **net}  # buffers (not averaged) as the checkpoint has them
        provenance = {
            "sigma_rel": float(sigma_rel),
            "gamma": sigma_rel_to_gamma(sigma_rel),
            "source": str(inputs.path.resolve()),
            "snapshot_steps": used,
            "relative_error": fit.relative_error,
        }
        with atomic_write(target) as tmp, open(tmp, "wb") as f:
            torch.save(averaged_checkpoint(config, state, raw, step, provenance), f)
        log.info(
            "sigma_rel=%g (gamma %.3g) at step %d from %d averages: profile error %.2g%% -> %s",
            sigma_rel,
            sigma_rel_to_gamma(sigma_rel),
            step,
            len(fit.coefficients),
            100 * fit.relative_error,
            target,
        )
        written.append(target)
    return written
