"""The report of an ``evaluate`` sweep: ONE table (Markdown and CSV) and ONE FID-vs-NFE plot over all its jobs.

    python -m ddpm_lab.evaluate -m ckpt=... sampler=ddim,dpm_solver sampler.steps=10,20,50

Each job writes its own ``results.json``; when the sweep ends, :class:`SweepReport` (``hydra.callbacks.sweep_report``
in ``evaluate.yaml``) collects them into ``<sweep folder>/sweep.md``, ``sweep.csv`` and ``fid_vs_nfe.png``: one row
per job with the settings that vary across the sweep, NFE (model evaluations per image), FID, KID and the wall
time per image; in the plot, one line per setting other than the number of steps. A second sweep into the same
folder (``hydra.sweep.dir=``) adds its rows to the report, under a lock; a report it cannot extend without dropping
a row is left as it is (exit status 2).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.figures import fid_vs_nfe_figure, save_figure
from ddpm_lab.config.overrides import MAX_YAML_BYTES, read_yaml
from ddpm_lab.config.run_folder import waiting_lock
from ddpm_lab.errors import ReportError, UserError, exit_with, one_line

log = logging.getLogger(__name__)

REPORT_FILES = ("sweep.md", "sweep.csv", "fid_vs_nfe.png")
REPORT_LOCK = ".sweep.lock"  # held while a sweep reads the folder's jobs and rewrites its report
# Overrides that say where things are, not how images are made: never a column.
PLACES = ("ckpt", "paths.", "cache_dir", "device", "dataset.root", "hydra.")
METRICS = ("nfe", "fid", "kid_mean", "seconds_per_image")


def job_row(output_dir: Path, overrides: list[str] | None = None) -> dict[str, Any] | None:
    """One job's settings (its overrides: given, else its ``.hydra/overrides.yaml``) and scores (its
    ``results.json``); ``None`` when it wrote none or they cannot be read (a damaged job is left out, with a
    warning)."""
    path = output_dir / "results.json"
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(f"over {MAX_YAML_BYTES} bytes")
        result = json.loads(path.read_text())
        if overrides is None:
            overrides = read_yaml(output_dir / ".hydra" / "overrides.yaml") or []
        given = dict(str(o).lstrip("+~").split("=", 1) for o in overrides if "=" in str(o))
        settings = {k: v for k, v in given.items() if not k.startswith(PLACES)}
        if "ckpt" in given:  # a column when the sweep compares checkpoints (e.g. post-hoc EMA lengths)
            settings = {"ckpt": given["ckpt"].strip("'\""), **settings}
        n = result.get("n_fake") or 1
        seconds = result["sampling_seconds"] / n if "sampling_seconds" in result else None
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, UserError) as e:
        log.warning("leaving %s out of the sweep report: %s", output_dir.name, one_line(e))
        return None
    return {
        "job": output_dir.name,
        "settings": settings,
        "nfe": result.get("nfe"),
        "fid": result.get("fid"),
        "kid_mean": result.get("kid_mean"),
        "seconds_per_image": seconds,
    }


def reported_jobs(folder: Path) -> list[str]:
    """The jobs an existing report in ``folder`` lists (its ``sweep.csv``'s last column), in order; [] when
    there is none. A ``sweep.md``/``sweep.csv`` that is not such a report is refused (ReportError): it is not ours
    to replace."""
    md, csv_path = folder / REPORT_FILES[0], folder / REPORT_FILES[1]
    if not md.exists() and not csv_path.exists():
        return []
    try:
        if csv_path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError("too large for a report")
        lines = list(csv.reader(io.StringIO(csv_path.read_text())))
    except (OSError, ValueError, csv.Error) as e:
        raise ReportError(f"{csv_path} cannot be read as a sweep report ({one_line(e)})") from None
    if not lines or lines[0][-1:] != ["job"] or any(len(line) != len(lines[0]) for line in lines):
        raise ReportError(f"{csv_path} is not a sweep report (no job column)")
    return [line[-1] for line in lines[1:]]


def short_names(paths: list[str]) -> dict[str, str]:
    """Each path by its fewest trailing parts that still tell it from the others (``ema_0.1_step_0001350.ckpt``,
    or ``runA/checkpoints/last.ckpt`` beside ``runB/...``)."""
    parts = {p: Path(p).parts for p in dict.fromkeys(paths)}
    for n in range(1, max((len(v) for v in parts.values()), default=1) + 1):
        names = {p: "/".join(v[-n:]) for p, v in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {p: p for p in parts}


def shown_settings(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each row's settings as the report shows them: checkpoints by their :func:`short_names`."""
    names = short_names([row["settings"]["ckpt"] for row in rows if "ckpt" in row["settings"]])
    return [{k: names.get(v, v) if k == "ckpt" else v for k, v in row["settings"].items()} for row in rows]


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The settings whose value differs between jobs (all of them when the jobs agree), in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row["settings"]))
    varying = [k for k in keys if len({row["settings"].get(k) for row in rows}) > 1]
    return varying or keys


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header and one line per job: swept settings, then NFE, FID, KID, seconds per image, the job's folder."""
    keys = swept_keys(rows)
    header = [*keys, *METRICS, "job"]
    shown = shown_settings(rows)
    return [header] + [
        [settings.get(k, "") for k in keys] + [_cell(row[m]) for m in METRICS] + [row["job"]]
        for row, settings in zip(rows, shown)
    ]


def markdown(lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines[1:]]) + "\n"


def fid_vs_nfe_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, float | None]]]:
    """The lines of the FID-vs-NFE plot: one per combination of the swept settings other than the number of steps,
    each a list of (NFE, FID, seconds per image) over the jobs that have both scores."""
    series_keys = [k for k in swept_keys(rows) if not k.endswith("steps")]
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    for row, settings in zip(rows, shown_settings(rows)):
        if row["nfe"] is not None and row["fid"] is not None:
            label = ", ".join(f"{k}={settings.get(k, '-')}" for k in series_keys) or "FID"
            series.setdefault(label, []).append((row["nfe"], row["fid"], row["seconds_per_image"]))
    return series


def write_report(folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """``sweep.md``, ``sweep.csv`` and ``fid_vs_nfe.png`` in ``folder`` (written atomically)."""
    lines = table(rows)
    md, csv_path, png = (folder / name for name in REPORT_FILES)
    with atomic_write(md, durable=False) as tmp:
        tmp.write_text(markdown(lines))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    with atomic_write(csv_path, durable=False) as tmp:
        tmp.write_text(buffer.getvalue())
    save_figure(fid_vs_nfe_figure(fid_vs_nfe_series(rows)), png)
    return [md, csv_path, png]


class SweepReport(Callback):
    """Hydra callback: remember each job's folder and overrides, and write the report when the sweep ends.

    Jobs are seen in this process (Hydra's basic launcher); with a remote launcher, nothing is written.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Path, list[str]]] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra_cfg = getattr(job_return, "hydra_cfg", None)
        if hydra_cfg is not None:
            self.jobs.append((Path(hydra_cfg.hydra.runtime.output_dir), list(job_return.overrides or [])))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folders = {folder.parent for folder, _ in self.jobs}
        if len(folders) != 1:  # not one sweep folder: nowhere that is ours to write to
            return
        folder = folders.pop()
        try:
            with waiting_lock(folder / REPORT_LOCK):  # another sweep into this folder may be writing its report
                paths, rows = self.merged_report(folder)
        except UserError as e:
            exit_with(e)
        if rows:
            print(markdown(table(rows)), end="", flush=True)
            print(f"sweep report: {', '.join(str(p) for p in paths)}", flush=True)

    def merged_report(self, folder: Path) -> tuple[list[Path], list[dict[str, Any]]]:
        """Write the report of every job in ``folder``: those an earlier sweep into it reported (first, in its
        order), then this sweep's. Refuses (ReportError) to drop a job the existing report lists."""
        earlier = reported_jobs(folder)
        ours = {folder_.name: overrides for folder_, overrides in self.jobs}
        rows = []
        for name in dict.fromkeys([*earlier, *ours]):
            row = job_row(folder / name, ours.get(name))
            if row is not None:
                rows.append(row)
        lost = [name for name in earlier if name not in {row["job"] for row in rows}]
        if lost:
            raise ReportError(
                f"{folder / REPORT_FILES[0]} lists job(s) {', '.join(lost[:3])} whose results.json is gone or "
                "unreadable: the report was not rewritten (nothing dropped); move it away to write a new one"
            )
        if not rows:
            return [], []
        return write_report(folder, rows), rows
