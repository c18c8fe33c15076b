"""``ddpm_lab.ranks``: whole batches per rank, gathered back in image order, and a failure on one rank raised on all
(two real gloo processes, as Lightning's launcher starts them)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_lab.ranks import Ranks, batch_share
from helpers import cli_env


@pytest.mark.parametrize("n, batch_size, world", [(10, 4, 2), (3, 4, 2), (100, 7, 3), (64, 64, 8), (1, 1, 4)])
def test_shares_are_whole_batches_in_order_covering_every_image_once(n, batch_size, world):
    parts = [batch_share(n, batch_size, r, world) for r in range(world)]
    assert [i for part in parts for i in part] == list(range(n))  # contiguous, in rank order, each image once
    assert all(part.start % batch_size == 0 for part in parts if part)  # each starts a batch of one device
    assert len(parts[0]) > 0  # rank 0 always has batch 0 (the strip and GIF frames)
    batches = [-(-len(p) // batch_size) for p in parts]
    assert max(batches) - min(batches) <= 1  # the work is spread evenly, in whole batches


def test_one_process_needs_no_group_and_keeps_everything():
    one = Ranks()
    assert one.share(10, 4) == range(10) and one.is_zero
    with one.together():
        pass
    with pytest.raises(KeyError):
        with one.together():
            raise KeyError("raised as it is")
    assert one.rank_zero_first(lambda: 7) == 7 and one.from_rank_zero(3) == 3
    with pytest.raises(ValueError, match="process group"):
        Ranks(0, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    env = {**cli_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    worker = Path(__file__).with_name("ranks_worker.py")
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(out)], env={**env, "RANK": str(r)}, stderr=subprocess.PIPE)
        for r in (0, 1)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_gather_every_part_in_image_order(two_ranks):
    zero, one = two_ranks
    assert zero["shares"] == [list(range(8)), [0, 1, 2]] and one["shares"] == [[8, 9], []]
    for seen in two_ranks:
        assert seen["gather"] == [10 * i for i in range(10)]
        assert seen["gather_first"] == [10 * i for i in range(5)]
        assert seen["gather_empty_rank"] == [0, 10, 20]
        assert seen["gather_none"] is True
        assert seen["features"] == [[0.0] * 3] * 4 + [[1.0] * 3] * 2  # rank 0's two batches, then rank 1's
        assert seen["from_zero"] == {"fid": 1.5}
        assert seen["after"] == "still joined"
    assert zero["zero_first"] is None and one["zero_first"] is True  # rank 1 ran after rank 0's work was done


def test_a_failure_on_one_rank_is_raised_on_every_rank(two_ranks):
    zero, one = two_ranks
    # a user error on rank 1: rank 0 reports it in kind (one line, naming the rank), rank 1 exits silently
    assert zero["user_error"] == {"error": "DatasetError", "message": "on rank 1: no images in /data"}
    assert one["user_error"] == {"error": "ReportedElsewhere", "status": 0}
    # a bug on rank 1: it raises its own error (traceback), rank 0 says which rank failed
    assert one["bug"] == {"error": "ValueError", "message": "bad shape"}
    assert (
        zero["bug"]["error"] == "RuntimeError" and "rank 1 failed with ValueError: bad shape" in zero["bug"]["message"]
    )
    assert zero["all_fine"] == one["all_fine"] == {"value": "ok"}
