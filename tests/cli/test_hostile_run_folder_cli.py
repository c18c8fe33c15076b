"""Security: a run folder from someone else whose Hydra record carries hostile entries is refused by ``resume=``
and ``evaluate`` through the real command lines (exit 2, one line), and the payload never runs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from ddpm_lab.config.real_images import compared_dataset
from helpers import run_cli, snapshot


class Payload:
    """Unpickling it creates ``marker``: the side effect that must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a finished run, shipped with a pickle payload and a marker path it would create."""
    run = tmp_path / "shared_run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "PWNED"
    (run / "checkpoints" / "extra.pt").write_bytes(pickle.dumps(Payload(marker)))
    return run, marker


def assert_refused(proc, marker: Path, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not marker.exists()


def test_resume_refuses_an_added_callback_that_would_unpickle_a_shipped_file(hostile_run, tmp_path):
    run, marker = hostile_run
    overrides = run / ".hydra" / "overrides.yaml"
    overrides.write_text(
        overrides.read_text()
        + "- +callbacks.evil._target_=torch.load\n"
        + f"- +callbacks.evil.f={run / 'checkpoints' / 'extra.pt'}\n"
        + "- +callbacks.evil.weights_only=false\n"
    )
    before = snapshot(run)
    proc = run_cli("ddpm_lab.train", f"resume='{run}'", cwd=tmp_path, check=False)
    assert_refused(proc, marker, str(overrides), "+callbacks.evil._target_=torch.load")
    assert snapshot(run) == before  # not even this launch's .hydra/resume_<time>/ is left


def test_resume_refuses_a_resolver_in_a_recorded_override(hostile_run, tmp_path, monkeypatch):
    run, marker = hostile_run
    earlier = run / ".hydra" / "resume_2026-01-01_00-00-00"
    earlier.mkdir()
    (earlier / "overrides.yaml").write_text("- trainer.max_steps=8\n- paths.data_dir=${oc.env:DDPM_LAB_EVIL}\n")
    (earlier / "started").touch()  # as if that resume reached training: its record is replayed, so checked
    before = snapshot(run)
    proc = run_cli("ddpm_lab.train", f"resume='{run}'", cwd=tmp_path, check=False)
    assert_refused(proc, marker, str(earlier / "overrides.yaml"), "${oc.env:DDPM_LAB_EVIL}")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("dataset_lines", "culprit"),
    [
        ("  root: ${oc.env:DDPM_LAB_EVIL,/tmp}\n", "${oc.env:DDPM_LAB_EVIL,/tmp}"),
        ("  _target_: torch.load\n  f: CHECKPOINTS/extra.pt\n  weights_only: false\n", "torch.load"),
        ("  root: /tmp\n  # " + "x" * 1_100_000 + "\n", "over the 1.0 MB a Hydra record can be"),
    ],
    ids=["resolver", "target", "huge"],
)
def test_evaluate_refuses_a_hostile_run_config(hostile_run, tmp_path, dataset_lines: str, culprit: str):
    run, marker = hostile_run
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    head, rest = text.split("dataset:\n", 1)
    body = rest.splitlines(keepends=True)
    first_top = next(i for i, line in enumerate(body) if not line.startswith(" "))
    kept = [line for line in body[:first_top] if not line.startswith(("  root:", "  _target_:"))]
    lines = dataset_lines.replace("CHECKPOINTS", str(run / "checkpoints"))
    config.write_text(head + "dataset:\n" + lines + "".join(kept + body[first_top:]))
    before = snapshot(run)
    out = tmp_path / "eval_out"
    proc = run_cli(
        "ddpm_lab.evaluate",
        f"ckpt='{run / 'checkpoints' / 'last.ckpt'}'",
        "features=tiny",
        "n=8",
        f"paths.output_root='{out}'",
        cwd=tmp_path,
        check=False,
    )
    assert_refused(proc, marker, str(config), culprit)
    assert snapshot(run) == before
    assert not out.exists() or not any(out.rglob("results.json"))


def test_evaluate_writes_decoded_caches_only_where_it_is_told_not_where_the_run_config_says(hostile_run, tmp_path):
    run, _ = hostile_run
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "  cache_dir: ${paths.cache_dir}\n" in text  # what training records
    config.write_text(text.replace("  cache_dir: ${paths.cache_dir}\n", "  cache_dir: ${oc.env:HOME}/elsewhere\n"))
    dataset = compared_dataset(None, str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "ours"), {})
    assert dataset["cache_dir"] == str(tmp_path / "ours")
