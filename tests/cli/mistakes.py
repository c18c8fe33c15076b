"""The harness behind ``test_mistakes_<entry point>.py``: every mistake or fault is one ``error:`` line, exit 2,
before any work, with every file that was there before left byte for byte as it was and nothing added.

Most cases call the entry point's ``main()`` in this process (``sys.argv`` swapped, Hydra's global state
cleared around each call); :func:`run_subprocess` runs a few through the real command line.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from ddpm_lab.config import run_folder
from helpers import cli_env, fake_run, snapshot, write_image_folder

MAX_SECONDS = 20  # a mistake must be found before any work: far less than a training step on a real model


@dataclass(frozen=True)
class Case:
    """One mistake: the overrides typed (``{tmp}`` is the table's folder) and the text its error line names."""

    category: str
    overrides: tuple[str, ...]
    culprit: str
    ids: str = field(default="")

    @property
    def id(self) -> str:
        return self.ids or " ".join(self.overrides).replace(" ", "_")[:80]


def case(category: str, overrides: str | Sequence[str], culprit: str) -> Case:
    return Case(category, (overrides,) if isinstance(overrides, str) else tuple(overrides), culprit)


def counts(cases: Sequence[Case]) -> Counter:
    return Counter(c.category for c in cases)


@dataclass
class Outcome:
    status: int
    stderr: str
    seconds: float


def run_in_process(main: Callable[[], object], argv: Sequence[str], cwd: Path) -> Outcome:
    """``main()`` of an entry point as ``python -m ... <argv>`` would run it, in this process, from ``cwd``."""
    GlobalHydra.instance().clear()
    old_argv, old_cwd, err = sys.argv, os.getcwd(), io.StringIO()
    sys.argv, status = ["ddpm_lab", *argv], 0
    os.chdir(cwd)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        seconds = time.perf_counter() - started
        sys.argv = old_argv
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        run_folder.release_launch()  # as the process's exit would: the next call is a launch of its own
    return Outcome(status, err.getvalue(), seconds)


def run_subprocess(module: str, argv: Sequence[str], cwd: Path) -> Outcome:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    return Outcome(proc.returncode, proc.stderr, time.perf_counter() - started)


def assert_refused(outcome: Outcome, culprit: str, before: dict[str, str], after: dict[str, str]) -> None:
    """Exit 2, stderr ending in one ``error:`` line naming ``culprit``, fast, and no file changed or added."""
    lines = outcome.stderr.strip().splitlines()
    assert outcome.status == 2, f"exit status {outcome.status}\n{outcome.stderr[-3000:]}"
    assert lines and lines[-1].startswith("error: "), outcome.stderr[-3000:]
    assert culprit in lines[-1], f"{culprit!r} not in {lines[-1]!r}"
    assert outcome.stderr.count("error: ") == 1 and "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert outcome.seconds < MAX_SECONDS, f"took {outcome.seconds:.1f} s"
    changed = {k for k in before if after.get(k) != before[k]}
    added = set(after) - set(before)
    assert not changed and not added, f"changed: {sorted(changed)}, left behind: {sorted(added)}"


# ------------------------------------------------------------------------------------- hostile and odd inputs
class Payload:
    """Unpickling this creates ``path``: the side effect a hostile checkpoint wants (and must never get)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def write_inputs(tmp: Path, good_ckpt: Callable[[Path], Path]) -> None:
    """Images, good/broken/foreign/hostile checkpoints, odd image folders and an earlier run in ``tmp/out``."""
    write_image_folder(tmp / "images")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "random.ckpt").write_bytes(os.urandom(4096))
    (tmp / "a_folder.ckpt").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.ckpt")
    with open(tmp / "hostile.ckpt", "wb") as f:
        pickle.dump({"state_dict": Payload(tmp / "PWNED")}, f)
    good = good_ckpt(tmp / "good.ckpt")
    (tmp / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp / "empty_folder").mkdir()
    (tmp / "garbage").mkdir()
    for i in range(3):
        (tmp / "garbage" / f"{i}.png").write_bytes(os.urandom(100))
    (tmp / "one_image").mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp / "one_image" / "0.png")
    fake_run(tmp / "out")


def check_case(run: Callable[[Sequence[str], Path], Outcome], base: Sequence[str], item: Case, tmp: Path) -> None:
    """Run ``base`` + the case's overrides from ``tmp``; assert it is refused cleanly (see :func:`assert_refused`)."""
    argv = [*(o.format(tmp=tmp) for o in base), *(o.format(tmp=tmp) for o in item.overrides)]
    before = snapshot(tmp)
    outcome = run(argv, tmp)
    assert_refused(outcome, item.culprit.format(tmp=tmp), before, snapshot(tmp))
    assert not (tmp / "PWNED").exists(), "a hostile pickle ran its payload"
