"""The decoded cache (data/decoded_cache.py): one memory-mapped file per split, keyed on the files, decoded once per
machine (other processes wait on its lock and map it; a failed decoder stops them in one line, a killed one is taken
over), a damaged or foreign file never trusted, a replaced image never served stale, only in our own cache folder."""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import folder_module
from ddpm_lab.artifacts.cache_dir import cache_folder, default_cache_dir
from ddpm_lab.data import ImageFolderDataModule
from ddpm_lab.data.decoded_cache import MAGIC, Decoded, lock_path, read_cache, shared_cache, write_cache
from ddpm_lab.errors import DatasetError
from helpers import cli_env, write_image_folder


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "decoded").glob("*.u8"))


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """The tensor's memory lies in a mapping of ``path`` (Linux's /proc/self/maps): pages of the file, not a copy."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            low, high = (int(a, 16) for a in line.split()[0].split("-"))
            if low <= address < high:
                return True
    return False


LINUX = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps (Linux)")


@LINUX
def test_image_folder_cache_is_used_keyed_and_memory_mapped(tmp_path: Path) -> None:
    root, cache = write_image_folder(tmp_path / "imgs", n_per_class=4), tmp_path / "cache"
    first = folder_module(root, cache_min_files=0, cache_dir=str(cache), val_size=2)
    (entry,) = entries(cache)
    # Train and validation index one mapping of the file: nothing of the split was copied into this process.
    assert first.train_images.images is first.val_images.images and mapped_from(first.train_images.images, entry)
    (root / "a" / "000.png").unlink()
    second = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    assert len(second.train_images) == len(first.train_images) + len(first.val_images) - 1
    assert len(entries(cache)) == 2
    folder_module(root, cache_min_files=100, cache_dir=str(cache))  # below the threshold: no cache
    assert len(entries(cache)) == 2
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # nothing of ours in the dataset folder


def _damages(entry: Path) -> dict[str, bytes]:
    """Ways a cache file can be wrong: each must be reported, decoded again and replaced."""
    data = entry.read_bytes()
    (length,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    header = json.loads(data[len(MAGIC) + 8 : len(MAGIC) + 8 + length])

    def with_header(**changes) -> bytes:
        blob = json.dumps({**header, **changes}).encode().ljust(length)  # same length: the offsets stay put
        return data[: len(MAGIC)] + struct.pack("<Q", len(blob)) + blob + data[len(MAGIC) + 8 + length :]

    labels = bytearray(data)
    labels[-8:] = struct.pack("<q", 7)  # the last label changed: its hash no longer matches
    return {
        "truncated": data[:-100],
        "garbage": b"garbage",
        "wrong magic": b"X" + data[1:],
        "huge header": data[: len(MAGIC)] + struct.pack("<Q", 1 << 60) + data[len(MAGIC) + 8 :],
        "foreign key": with_header(key="0" * 24),
        "more images than bytes": with_header(count=header["count"] * 1000),
        "edited labels": bytes(labels),
        "a torch file": b"PK\x03\x04" + data[4:],
    }


def test_a_damaged_or_foreign_decoded_cache_is_reported_rebuilt_and_fine_next_time(tmp_path: Path, caplog):
    root, cache = write_image_folder(tmp_path / "imgs", n_per_class=3), tmp_path / "cache"
    expected = folder_module(root, cache_min_files=0, cache_dir=str(cache)).train_images[:]  # a copy: we edit the file
    (entry,) = entries(cache)
    for kind, damage in _damages(entry).items():
        entry.write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = folder_module(root, cache_min_files=0, cache_dir=str(cache))
        assert torch.equal(again.train_images, expected), kind
        assert caplog.text.count(f"decoded cache {entry} is damaged") == 1, kind
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            folder_module(root, cache_min_files=0, cache_dir=str(cache))
        assert "damaged" not in caplog.text, kind  # rewritten: the warning does not repeat every run


def test_a_replaced_image_with_the_same_size_and_mtime_is_not_served_stale(tmp_path: Path):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # BMP: a changed pixel keeps the file's size exactly
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.bmp")
    first = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    target = root / "1.bmp"
    st = target.stat()
    pixels = np.asarray(Image.open(target)).copy()
    pixels[4:12, 4:12] = 255 - pixels[4:12, 4:12]
    Image.fromarray(pixels).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a copy tool that keeps times would
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    fresh = folder_module(root, cache_min_files=None)  # no cache at all
    assert not torch.equal(first.train_images, fresh.train_images)
    assert torch.equal(second.train_images, fresh.train_images)  # decoded again, not the stale entry
    assert len(entries(cache)) == 2


def test_the_default_cache_folder_is_ours_and_old_pt_caches_are_left_alone(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ddpm_lab" == cache_folder(None)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    assert default_cache_dir() == Path.home() / ".cache" / "ddpm_lab"
    assert cache_folder("~/x") == Path.home() / "x"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = write_image_folder(tmp_path / "imgs", n_per_class=2, classes=("a",))
    old = tmp_path / "xdg" / "ddpm_lab" / "decoded" / "imgs-16px-3ch-0123456789abcdef01234567.pt"
    old.parent.mkdir(parents=True)
    torch.save({"key": "x", "images": torch.zeros(2, 3, 16, 16, dtype=torch.uint8)}, old)
    started = time.time()
    with caplog.at_level(logging.INFO):
        folder_module(root, cache_min_files=0)  # paths.cache_dir: null
    (entry,) = entries(tmp_path / "xdg" / "ddpm_lab")
    assert entry.stat().st_mtime >= started - 1
    assert old.is_file() and "1 decoded cache(s) of ddpm_lab 0.2" in caplog.text  # never read, never deleted


def _decoded(n: int = 3) -> Decoded:
    return Decoded(torch.arange(n * 12, dtype=torch.uint8).reshape(n, 3, 2, 2), torch.arange(n) - 1, [])


def test_a_failed_decoder_stops_the_processes_waiting_for_it_in_one_line(tmp_path: Path):
    path, waiting, outcome = tmp_path / "split.u8", threading.Event(), {}

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("waiting for process"):
                waiting.set()

    def failing() -> Decoded:
        assert waiting.wait(30), "the second process never waited"
        raise DatasetError("3 unreadable image(s) under /data: a.png (OSError: truncated)")

    def first() -> None:
        try:
            shared_cache(path, "k", 2, 3, failing)
        except DatasetError as e:
            outcome["first"] = str(e)

    handler = Waiting()
    logging.getLogger("ddpm_lab.data.decoded_cache").addHandler(handler)
    logging.getLogger("ddpm_lab.data.decoded_cache").setLevel(logging.INFO)
    try:
        thread = threading.Thread(target=first)
        thread.start()
        while not lock_path(path).exists():
            time.sleep(0.01)
        time.sleep(0.2)  # the first holds the lock by now (it opens the file, then flocks it)
        with pytest.raises(DatasetError) as stopped:
            shared_cache(path, "k", 2, 3, lambda: pytest.fail("the waiter must not decode again"))
        thread.join(30)
    finally:
        logging.getLogger("ddpm_lab.data.decoded_cache").removeHandler(handler)
    assert outcome["first"].startswith("3 unreadable image(s)")
    message = str(stopped.value)
    assert "\n" not in message and f"process {os.getpid()} on " in message
    assert "failed to decode the images for split.u8 (3 unreadable image(s) under /data" in message
    assert not path.exists()
    # A later launch is not stopped by that old failure: it decodes, writes and maps the file.
    decoded, fresh = shared_cache(path, "k", 2, 3, _decoded)
    assert fresh and torch.equal(decoded.images, _decoded().images)
    assert not Path("/proc/self/maps").is_file() or mapped_from(decoded.images, path)  # the decoder maps it too


def test_a_killed_decoder_is_taken_over_and_a_finished_file_is_read_without_decoding(tmp_path: Path):
    path = tmp_path / "split.u8"
    # What a process killed while decoding leaves: its record says "decoding", but it holds no flock any more.
    lock_path(path).write_text(json.dumps({"pid": 1, "host": "gone", "state": "decoding", "time": time.time()}))
    decoded, fresh = shared_cache(path, "k", 2, 3, _decoded)
    assert fresh and torch.equal(decoded.labels, torch.tensor([-1, 0, 1]))
    again, fresh = shared_cache(path, "k", 2, 3, lambda: pytest.fail("decoded twice"))
    assert not fresh and torch.equal(again.images, decoded.images)
    assert read_cache(path, "other key", 2, 3) is None and read_cache(path, "k", 4, 3) is None


def test_an_unwritable_cache_folder_costs_only_decoding_in_memory(tmp_path: Path, caplog):
    (tmp_path / "file").touch()  # a cache folder that cannot be made (also for root, whom permissions never stop)
    with caplog.at_level(logging.WARNING):
        decoded, fresh = shared_cache(tmp_path / "file" / "split.u8", "k", 2, 3, _decoded)
    assert fresh and len(decoded.images) == 3 and "decoding in this process only" in caplog.text
    assert write_cache(tmp_path / "file" / "x.u8", "k", _decoded()) is False


CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from ddpm_lab.data import ImageFolderDataModule
dm = ImageFolderDataModule(root=sys.argv[1], image_size=16, val_size=0, cache_min_files=0, cache_dir=sys.argv[2])
dm.setup("fit")
print("MAPPED", any(sys.argv[2] in line for line in open("/proc/self/maps")))
print("SUM", int(dm.train_images.images.sum()))
"""


@LINUX
def test_two_processes_decode_once_the_second_waits_and_maps_the_same_file(tmp_path: Path, monkeypatch) -> None:
    """Two ranks of one machine: the first to the lock decodes and writes; the other waits, then maps the file."""
    root, cache = write_image_folder(tmp_path / "imgs", n_per_class=4), tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(cache)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: [(seen.append(x), lines.put(x)) for x in child.stderr], daemon=True)
    reader.start()
    decodes = []
    original = ImageFolderDataModule.decode_split

    def decode_after_the_child_waits(self) -> Decoded:
        decodes.append(os.getpid())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # hold the lock until the other process is blocked on it
            try:
                if lines.get(timeout=1).startswith("waiting for process"):
                    break
            except queue.Empty:
                assert child.poll() is None, "the second process exited without waiting"
        return original(self)

    monkeypatch.setattr(ImageFolderDataModule, "decode_split", decode_after_the_child_waits)
    dm = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    out = child.stdout.read()  # stderr is the reader thread's
    child.wait(timeout=120)
    reader.join(30)
    log = "".join(seen)
    assert child.returncode == 0, log
    assert decodes == [os.getpid()]  # one decode, in this process
    assert "decoding the images" not in log and "memory-mapped (written by another process)" in log
    assert "MAPPED True" in out and f"SUM {int(dm.train_images.images.sum())}" in out
    assert len(entries(cache)) == 1
