"""The loggers a run can use (``configs/logger/*.yaml``), one row each in :data:`LOGGERS`: the optional package it
needs, its folder in the run folder, and how it goes on with what the run logged when ``resume=`` continues it.

Adding a logger: its ``configs/logger/<name>.yaml`` and its row here (plus ``training/media.py`` when it can show
images, and an extra in ``pyproject.toml`` when its package is optional).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from ddpm_lab.config.overrides import read_yaml
from ddpm_lab.errors import RunFolderError


def _purge_after(node: DictConfig, step: int) -> None:
    """TensorBoard hides what was logged after ``step`` (``purge_step``), so the curves join up."""
    with open_dict(node):
        node.purge_step = step


def _next_csv_version(node: DictConfig, step: int) -> None:
    """CSV writes a new ``csv/resume_<k>/metrics.csv`` (Lightning's CSV logger deletes a ``metrics.csv`` it finds)."""
    folder = Path(node.save_dir) / node.name
    k = next(k for k in range(1, 10_000) if not (folder / f"resume_{k}").exists())
    with open_dict(node):
        node.version = f"resume_{k}"


def _only_mlflow_run(store: Path) -> str | None:
    """The id of the single run in a local MLflow file store (``<store>/<experiment>/<run>/meta.yaml``), else None."""
    runs = [p.parent.name for p in store.glob("*/*/meta.yaml") if p.parent.parent.name not in (".trash", "models")]
    return runs[0] if len(runs) == 1 else None


def _local(uri: str) -> Path:
    return Path(os.path.abspath(uri.removeprefix("file://").removeprefix("file:")))


def check_mlflow_store(store: Path) -> None:
    """Refuse a run folder's MLflow file store whose experiments or runs keep their artifacts elsewhere
    (``artifact_location`` / ``artifact_uri`` in their ``meta.yaml``, untrusted): logging into them would write
    outside the run folder (a hostile edit, or a copied run whose store still points at the original)."""
    root = Path(os.path.realpath(store))
    for meta in sorted([*store.glob("*/meta.yaml"), *store.glob("*/*/meta.yaml")]):
        fields = read_yaml(meta)
        for key in ("artifact_location", "artifact_uri"):
            uri = fields.get(key) if isinstance(fields, dict) else None
            if isinstance(uri, str) and uri.startswith(("file:", "/")):
                where = Path(os.path.realpath(_local(uri)))
                if where != root and root not in where.parents:
                    raise RunFolderError(
                        f"{meta}: its {key} {uri[:200]} is outside this run's MLflow store {store}, so resuming "
                        "would log there: resume the original run, or remove mlruns/ from this copy"
                    )


def _same_mlflow_run(node: DictConfig, step: int) -> None:
    """MLflow logs into the run's own MLflow run when its file store holds exactly one (else it starts one); a
    store that keeps artifacts outside itself is refused first (:func:`check_mlflow_store`)."""
    uri = str(node.get("tracking_uri") or "")
    if uri.startswith("file:"):
        check_mlflow_store(_local(uri))
    run_id = _only_mlflow_run(_local(uri)) if uri.startswith("file:") else None
    if run_id is not None and not node.get("run_id"):
        with open_dict(node):
            node.run_id = run_id


@dataclass(frozen=True)
class LoggerRow:
    """What the run folder, the checks and ``resume=`` need to know of one Lightning logger class."""

    folder: str  # its folder under the run folder (where its configs/logger/*.yaml puts it)
    needs: tuple[str, str] | None = None  # optional package: (module to import, ddpm_lab extra that installs it)
    resume: Callable[[DictConfig, int], None] | None = None  # sets its config node to continue at a step; None: as is


# Lightning logger class name (the last part of ``_target_``) -> its row.
LOGGERS: dict[str, LoggerRow] = {
    "TensorBoardLogger": LoggerRow("tensorboard", resume=_purge_after),
    "CSVLogger": LoggerRow("csv", resume=_next_csv_version),
    "MLFlowLogger": LoggerRow("mlruns", ("mlflow", "mlflow"), _same_mlflow_run),
    "MLFlowFileLogger": LoggerRow("mlruns", ("mlflow", "mlflow"), _same_mlflow_run),
    "WandbLogger": LoggerRow("wandb", ("wandb", "wandb")),  # resumed: a new W&B run in the same wandb/ folder
}


def logger_row(node: Any) -> LoggerRow | None:
    """The row of a ``logger.<name>`` config node by its ``_target_`` class; None for a logger not in the table."""
    if not isinstance(node, DictConfig):
        return None
    return LOGGERS.get(str(node.get("_target_", "")).rsplit(".", 1)[-1])


def logger_folders() -> list[str]:
    """The loggers' folders under a run folder, each once."""
    return list(dict.fromkeys(row.folder for row in LOGGERS.values()))
