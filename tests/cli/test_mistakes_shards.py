"""``python -m ddpm_lab.shards``: every mistake in this table is one ``error:`` line, exit status 2, found before
anything is written, and leaves every file that was there before as it was (tests/cli/mistakes.py is the harness;
tests/unit/data/test_streaming.py writes and reads real shards)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ddpm_lab.shards import main
from helpers import fake_run, write_image_folder
from mistakes import case, check_case, counts, run_in_process

BASE = ("dataset=image_folder", "dataset.root={tmp}/images", "dataset.image_size=8")
OUT = "out={tmp}/new_shards"

CASES = [
    case("keys", [OUT, "chunk_byte=1MB"], "chunk_byte is not a setting of shards.yaml"),
    case("missing", [], "out= is not set: pass out=<new folder>"),
    case("types", "out=''", "out= must be a folder, got ''"),
    case("types", [OUT, "workers=two"], "workers must be an integer"),
    case("types", [OUT, "chunk_bytes=lots"], "chunk_bytes='lots' is not a size"),
    case("ranges", [OUT, "workers=0"], "workers must be >= 1"),
    case("ranges", [OUT, "dataset.image_size=0"], "dataset.image_size must be >= 1"),
    case("enumerations", [OUT, "dataset.channels=2"], "dataset.channels must be one of (1, 3)"),
    case("data", [OUT, "dataset.root={tmp}/missing"], "image folder {tmp}/missing does not exist"),
    case("data", [OUT, "dataset.root={tmp}/empty_folder"], "{tmp}/empty_folder holds no images"),
    case("data", [OUT, "dataset.root={tmp}/a_file"], "image folder {tmp}/a_file is a file"),
    case("output", "out={tmp}/out", "out={tmp}/out already exists and is not empty"),
    case("output", "out={tmp}/a_file", "out={tmp}/a_file already exists and is not empty"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes_shards")
    write_image_folder(root / "images", n_per_class=3, size=8)
    (root / "a_file").write_text("not a folder")
    (root / "empty_folder").mkdir()
    fake_run(root / "out")
    return root


def test_the_table_is_varied():
    assert len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {"keys", "missing", "types", "ranges", "enumerations", "data", "output"}


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)


def test_streaming_is_not_written_again_and_a_missing_litdata_is_one_line(tmp: Path, monkeypatch):
    streaming = case("enumerations", ["dataset=streaming", "dataset.root={tmp}/out", OUT], "is shards already")
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), (), streaming, tmp)
    monkeypatch.setitem(sys.modules, "litdata", None)  # import litdata raises ImportError
    missing = case("packages", OUT, 'needs litdata, which is not installed: pip install "ddpm_lab[streaming]"')
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, missing, tmp)
