"""The HTML explorer page: self-contained, one frame per chosen t, and a real browser shows the t it is asked for."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lab.artifacts.explorer import FORWARD, Frame, explorer_frames, explorer_page, save_explorer
from ddpm_lab.diffusion import GaussianDiffusion, make_betas

T = 100
CHOSEN = [0, 13, 40, 99]
CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forward-process frames of two smooth 24 px images at the chosen t (no model)."""
    diffusion = GaussianDiffusion(make_betas("cosine", T))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), indexing="ij")
    x0 = torch.stack([torch.stack([xx, yy, -xx]), torch.stack([yy, -yy, xx * yy])]).clamp(-1, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    frames = explorer_frames(diffusion, x0, noise, CHOSEN)
    return save_explorer(frames, diffusion.betas, tmp_path_factory.mktemp("explorer") / "page.html", "test page")


def test_one_self_contained_frame_per_chosen_t(page: Path) -> None:
    html = page.read_text()
    assert [int(t) for t in re.findall(r'class="frame" data-t="(\d+)"', html)] == CHOSEN
    assert html.count('<img src="data:image/png;base64,') == len(CHOSEN) and FORWARD in html
    assert not re.search(r"https?:|\b(src|href)=\"(?!data:)|<link|@import|url\(", html)
    numbers = [(int(t), float(a)) for t, a in re.findall(r"t = (\d+) &nbsp; ᾱ_t = ([-+.e\d]+)", html)]
    assert [t for t, _ in numbers] == CHOSEN
    alpha_bar = [a for _, a in numbers]
    assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3 and alpha_bar == sorted(alpha_bar, reverse=True)


def test_refuses_timesteps_outside_the_schedule() -> None:
    betas = make_betas("cosine", 10)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        explorer_page([Frame(10, {"x": torch.zeros(1, 2, 2, dtype=torch.uint8)})], betas, "x")
    with pytest.raises(ValueError, match="at least one frame"):
        explorer_page([], betas, "x")


def _chromium(url: str, out: Path, *args: str) -> subprocess.Popen:
    """Headless Chromium on this closed network: no sandbox (root in CI), no GPU, no background traffic."""
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    flags += " --disable-component-update --disable-sync"
    command = [CHROMIUM, *flags.split(), f"--user-data-dir={out.parent / (out.stem + '_profile')}", *args, url]
    return subprocess.Popen(command, stdout=out.open("wb"), stderr=subprocess.DEVNULL)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs Debian's chromium with apt)")
def test_a_browser_shows_the_frame_the_fragment_asks_for(page: Path, tmp_path: Path) -> None:
    shots = {t: tmp_path / f"t{t}.png" for t in (0, 99)}
    runs = [
        _chromium(f"{page.as_uri()}#t={t}", tmp_path / f"t{t}.log", f"--screenshot={shot}", "--window-size=900,620")
        for t, shot in shots.items()
    ]
    runs.append(_chromium(f"{page.as_uri()}#t=38", tmp_path / "dom.html", "--dump-dom"))  # nearest chosen: 40
    for run in runs:
        assert run.wait(timeout=60) == 0
    dom = (tmp_path / "dom.html").read_text()
    visible = re.findall(r'<section class="frame" data-t="(\d+)"(?![^>]*hidden)', dom)
    assert visible == ["40"], visible
    assert 'id="tvalue">40<' in dom
    a, b = (np.asarray(Image.open(shots[t]).convert("RGB"), dtype=np.int16) for t in (0, 99))
    assert a.shape == b.shape == (620, 900, 3)
    changed = np.abs(a - b).max(axis=2) > 30
    # The images, the slider, the marker and the numbers moved: many pixels, not a repaint of the same frame.
    assert changed.sum() > 5000, changed.sum()
