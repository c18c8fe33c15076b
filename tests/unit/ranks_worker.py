"""One rank of the two-process check in ``test_ranks.py``: joins a gloo group from RANK/WORLD_SIZE/MASTER_* (as a
launcher sets them), runs each case against ``ddpm_lab.ranks.Ranks`` and writes what it saw to
``<out>/rank<r>.json``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ddpm_lab.errors import DatasetError, ReportedElsewhere
from ddpm_lab.ranks import Ranks


def outcome(block) -> dict:
    try:
        return {"value": block()}
    except ReportedElsewhere as e:
        return {"error": "ReportedElsewhere", "status": e.status}
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}


def fail_on_rank_one(ranks: Ranks, error: Exception) -> None:
    with ranks.together():
        if ranks.rank == 1:
            raise error


def main(out: Path) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ranks = Ranks(rank, world, quiet_status=0)
    seen: dict = {}

    def gathered(n: int, batch_size: int, first: int | None = None) -> list[int]:
        share = ranks.share(n, batch_size)
        part = torch.arange(share.start, share.stop, dtype=torch.int64) * 10 if share else None
        return ranks.gather(part, n, batch_size, first).tolist()

    seen["shares"] = [list(ranks.share(10, 4)), list(ranks.share(3, 4))]
    seen["gather"] = gathered(10, 4)
    seen["gather_first"] = gathered(10, 4, first=5)
    seen["gather_empty_rank"] = gathered(3, 4)  # one batch: rank 1 draws nothing
    seen["gather_none"] = ranks.gather(None, 10, 4) is None
    seen["features"] = ranks.gather(torch.full((len(ranks.share(6, 2)), 3), float(rank), dtype=torch.float64), 6, 2)
    seen["features"] = seen["features"].tolist()
    seen["from_zero"] = ranks.from_rank_zero({"fid": 1.5} if ranks.is_zero else None)
    seen["user_error"] = outcome(lambda: fail_on_rank_one(ranks, DatasetError("no images in /data")))
    seen["bug"] = outcome(lambda: fail_on_rank_one(ranks, ValueError("bad shape")))

    def fine() -> str:
        with ranks.together():
            pass
        return "ok"

    seen["all_fine"] = outcome(fine)
    marker = out / "rank0_was_here"
    seen["zero_first"] = ranks.rank_zero_first(lambda: marker.touch() if ranks.is_zero else marker.is_file())
    seen["after"] = ranks.from_rank_zero("still joined")  # every failure above left the group usable
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
