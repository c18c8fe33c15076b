"""Custom OmegaConf resolvers used by the configs; registered once when ``ddpm_lab.config`` is imported."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ddpm_lab.config.checks import check_output_root
from ddpm_lab.config.run_folder import (
    CHECKPOINTS,
    RESUME_PREFIX,
    check_plain_run_folder,
    claim_fresh_run_folder,
    lock_run_folder,
    make_folders,
    undo_setup,
)
from ddpm_lab.errors import (
    OutputExistsError,
    ResumeError,
    RunFolderBusyError,
    RunFolderError,
    UserError,
    exit_with,
    os_reason,
)
from ddpm_lab.training import auto_warmup


def run_name(override_dirname: str, max_len: int = 120) -> str:
    """A folder- and TensorBoard-friendly run name from Hydra's ``override_dirname``.

    Group choices (``schedule=cosine`` → ``schedule-cosine``) come first and dotted keys are shortened to their last
    part (``optimizer.lr=1e-3`` → ``lr-1e-3``), so what tells runs apart survives the length limit.
    """
    items = [i for i in override_dirname.split(",") if i]
    groups = [i for i in items if "." not in i.split("=", 1)[0]]
    values = [
        i.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + i.split("=", 1)[-1] if "=" in i else i
        for i in items
        if i not in groups
    ]
    # '=' and ',' are Hydra override syntax: keep them out, so a run folder can be passed as a value unquoted.
    name = "_".join(i.replace("=", "-") for i in groups + values)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name.replace("/", "-")).strip("-._")
    return (name[:max_len] or "default").rstrip("-._")


def floordiv(a: int, b: int) -> int:
    """``${floordiv:${dataset.image_size},4}``: e.g. the feature-map side that gets attention."""
    return int(a) // int(b)


def default_warmup(max_steps: object) -> int:
    """``${auto_warmup:${trainer.max_steps}}``: the default warm-up, min(1000, 5% of the run's steps). A
    ``max_steps`` that is not a number gets the cap here; ``check_trainer_values`` names the mistake."""
    try:
        return auto_warmup(max_steps)
    except ValueError:
        return auto_warmup(-1)


def fresh_run_dir(output_root: str | None, below: str) -> str:
    """Resolver for a fresh run folder, ``<output_root>/<below>``: ``paths.output_root`` must be set (``null``
    would make a ``None/`` folder). Checked as Hydra resolves ``hydra.run.dir``, before anything is created;
    :class:`~ddpm_lab.config.hydra_callbacks.RunFolders` then claims the folder."""
    return f"{check_output_root(output_root)}/{below}"


@functools.cache  # claimed once per job, however often Hydra resolves it
def fresh_job_dir(sweep_dir: str, subdir: str) -> str:
    """Resolver for ``hydra.sweep.subdir``: a multirun job's folder ``<sweep dir>/<subdir>``, claimed (created and
    locked, only when it holds nothing) as Hydra resolves it for the job, before Hydra writes into it. When another
    sweep into the same ``hydra.sweep.dir`` has that name, the job gets ``<subdir>-2`` (``-3``, ...): two sweeps
    never share, nor overwrite, a job's folder."""
    for k in range(1, 100):
        name = subdir if k == 1 else f"{subdir}-{k}"
        try:
            claim_fresh_run_folder(Path(sweep_dir) / name, job="multirun job")
        except OutputExistsError:
            continue
        return name
    raise OutputExistsError(
        f"{Path(sweep_dir) / subdir}: 99 folders of that name exist; choose another hydra.sweep.dir"
    )


@functools.cache  # checked and locked once per process, however often Hydra resolves it
def resume_run_dir(resume: str | None, fresh: str) -> str:
    """Resolver for ``hydra.run.dir``: the run folder being resumed (checked and locked for this process before
    Hydra writes anything), or a fresh one (claimed by :class:`~ddpm_lab.config.hydra_callbacks.RunFolders`
    before Hydra creates it)."""
    if not resume:
        return fresh
    run = Path(resume).expanduser()
    if not (run / ".hydra" / "overrides.yaml").is_file():
        raise ResumeError(
            f"resume={resume} is not a training run folder (no .hydra/overrides.yaml): pass the folder of "
            "a run, e.g. resume=outputs/train/<run>"
        )
    if not any((run / CHECKPOINTS).glob("*.ckpt")):
        raise ResumeError(
            f"resume={resume}: no checkpoint in {run / CHECKPOINTS} (the run stopped before its first one)"
        )
    check_plain_run_folder(run)
    try:
        lock_run_folder(run)
    except RunFolderBusyError as e:
        raise ResumeError(
            f"resume={resume}: the run is still training ({e}): wait until it has stopped, then resume it"
        ) from None
    return str(run)


@functools.cache  # one name per process, however often Hydra resolves it
def run_uid() -> str:
    """Resolver ``${run_uid:}``: a short random suffix that keeps run folder names unique within one second."""
    return secrets.token_hex(3)


@functools.cache  # one folder per process, however often Hydra resolves it
def resume_output_subdir(resume: str | None) -> str:
    """Resolver for ``hydra.output_subdir``: a resumed launch must not overwrite the run's own ``.hydra`` files.

    The folder ``<run>/.hydra/resume_<time>_<uid>`` is created here (recorded as this launch's own, for clean-up).
    """
    if not resume:
        return ".hydra"
    name = f".hydra/{RESUME_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S}_{run_uid()}"
    make_folders(Path(resume).expanduser().absolute() / name)
    return name


def exit_on_user_error(resolver: Callable[..., Any]) -> Callable[..., Any]:
    """A resolver that reports a UserError, or an OS error of the run folder it sets up (a name too long, a full
    disk, no permission), as one line and exit status 2.

    Hydra resolves ``hydra.run.dir`` outside the task function and would print an exception it fails to format.
    """

    @functools.wraps(resolver)
    def wrapped(*args: Any) -> Any:
        try:
            return resolver(*args)
        except UserError as e:
            undo_setup()
            exit_with(e)
        except OSError as e:
            undo_setup()
            exit_with(RunFolderError(f"cannot set up the run folder: {os_reason(e)}"))

    return wrapped


RESOLVERS = {
    "run_name": run_name,
    "floordiv": floordiv,
    "resume_run_dir": exit_on_user_error(resume_run_dir),
    "resume_output_subdir": exit_on_user_error(resume_output_subdir),
    "run_uid": run_uid,
    "auto_warmup": default_warmup,
    "fresh_run_dir": exit_on_user_error(fresh_run_dir),
    "fresh_job_dir": exit_on_user_error(fresh_job_dir),
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
