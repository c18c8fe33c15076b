"""Hydra callbacks of every launch (``hydra.callbacks.run_folders`` in ``configs/hydra/default.yaml``): claim a
fresh run folder before Hydra writes into it, and after a sweep name the jobs that failed with a mistake
(:func:`multirun_job` runs one job of a sweep of any command so that its mistake fails it alone).

(The ``evaluate`` sweep report's callback, :class:`~ddpm_lab.config.sweep_report.SweepReport`, lives beside the
report it writes.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.config.run_folder import (
    claim_fresh_run_folder,
    discard_fresh_run_folder,
    lock_run_folder,
    remember_log_size,
    undo_setup,
    unlock_run_folder,
)
from ddpm_lab.errors import EXIT_USER_ERROR, RunFolderError, UserError, exit_with, one_line, os_reason

_failed_jobs: list[str] = []
T = TypeVar("T")


def multirun_job_failed(error: UserError) -> None:
    """Report a multirun job's mistake as one line naming the job, and remember it for :class:`RunFolders`;
    the sweep goes on with its other jobs."""
    hc = HydraConfig.get()
    # Every override, not override_dirname: that one leaves out the keys excluded from folder names (ckpt, paths),
    # which may be the very ones the sweep varies (`evaluate -m ckpt=a,b,c`).
    job = f"job {hc.job.num} ({' '.join(hc.overrides.task) or 'no overrides'})"
    print(f"error: {job}: {one_line(error)}", file=sys.stderr, flush=True)
    _failed_jobs.append(job)


def is_multirun() -> bool:
    """Whether this process runs the jobs of a Hydra sweep (``-m``)."""
    return (
        HydraConfig.initialized() and HydraConfig.get().mode is not None and HydraConfig.get().mode.name == "MULTIRUN"
    )


def multirun_job(work: Callable[[], T]) -> T | None:
    """One job of a sweep: ``work()`` in the job's own folder, locked (claimed by ``fresh_job_dir``). A mistake
    fails this job alone: what it wrote is removed, one line names it, and the sweep goes on with its other jobs
    (:class:`RunFolders` names the failed ones at the end and exits with status 2). None for a failed job."""
    run = HydraConfig.get().runtime.output_dir
    try:
        lock_run_folder(run)
        return work()
    except UserError as e:
        discard_fresh_run_folder()
        multirun_job_failed(e)
        return None
    finally:
        unlock_run_folder(run)


class RunFolders(Callback):
    """Hydra callback (``hydra.callbacks.run_folders``).

    * ``on_run_start`` (before Hydra creates the run folder or writes ``.hydra/``): a fresh launch claims its
      folder, default or given as ``hydra.run.dir``: created and locked for this process, refused (one line,
      exit status 2, nothing written) when it holds anything.
    * ``on_multirun_end``: name the jobs that failed with a mistake, and exit with status 2.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exceptions into warnings and goes on: every failure here must exit instead.
        run = "(not resolved)"
        try:
            HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:job.override_dirname}
            run = str(config.hydra.run.dir)  # resume=: resume_run_dir checks and locks the run as this resolves
            if not OmegaConf.select(config, "resume"):
                claim_fresh_run_folder(run, str(config.hydra.job.name))
            else:  # a failed resume takes back the lines it logged
                remember_log_size(run, str(config.hydra.job.name))
        except UserError as e:
            undo_setup()
            exit_with(e)
        except OSError as e:  # a name too long, a full disk, no permission: the user's to fix, so one line, status 2
            undo_setup()
            exit_with(RunFolderError(f"cannot set up the run folder {run}: {os_reason(e)}"))
        except Exception as e:
            raise SystemExit(f"error: cannot set up the run folder: {one_line(e)}") from e

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _failed_jobs:
            print(
                f"error: {len(_failed_jobs)} multirun job(s) failed (messages above): {', '.join(_failed_jobs)}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(EXIT_USER_ERROR)
