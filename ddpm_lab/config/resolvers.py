"""Custom OmegaConf resolvers used by the configs; registered once when ``ddpm_lab.config`` is imported."""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from ddpm_lab.config.checks import check_output_root
from ddpm_lab.config.run_folder import exit_on_user_error, resume_output_subdir, resume_run_dir, run_uid
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
    :class:`~ddpm_lab.config.run_folder.RunFolders` then claims the folder."""
    return f"{check_output_root(output_root)}/{below}"


RESOLVERS = {
    "run_name": run_name,
    "floordiv": floordiv,
    "resume_run_dir": exit_on_user_error(resume_run_dir),
    "resume_output_subdir": exit_on_user_error(resume_output_subdir),
    "run_uid": run_uid,
    "auto_warmup": default_warmup,
    "fresh_run_dir": exit_on_user_error(fresh_run_dir),
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
