"""Serve TensorBoard for one run on 127.0.0.1 and screenshot a dashboard tab with headless Chromium.

    python scripts/tensorboard_screenshot.py outputs/train/<run> --out tb_images.png [--tab images]

Not part of the test suite: it needs Debian's ``chromium`` (``apt-get install -y chromium``). The server
listens on the loopback interface only, every wait is bounded, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"TensorBoard did not answer at {url} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (its tensorboard/ sub-folder is served) or any logdir")
    parser.add_argument("--out", type=Path, default=Path("tensorboard_images.png"))
    parser.add_argument(
        "--tab", default="images", help="dashboard in the URL fragment: images, scalars, hparams, text, ..."
    )
    parser.add_argument("--size", default="1600,2400", help="window width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=15000, help="time Chromium gives the page to render")
    parser.add_argument("--timeout", type=float, default=120.0, help="limit for the server start and the screenshot")
    args = parser.parse_args()

    logdir = args.run / "tensorboard" if (args.run / "tensorboard").is_dir() else args.run
    if not logdir.is_dir():
        parser.error(f"{logdir} is not a folder: pass a run folder such as outputs/train/<run>")
    if args.out.exists():
        parser.error(f"{args.out} exists: pass another --out")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("chromium not found: apt-get install -y chromium")

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/data/runs", args.timeout)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={args.size}",
                    f"--virtual-time-budget={args.wait_ms}",
                    f"--screenshot={args.out.resolve()}",
                    f"{base}/#{args.tab}",
                ],
                check=True,
                timeout=args.timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
