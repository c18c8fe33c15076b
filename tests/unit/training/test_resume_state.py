"""``resume_state`` read back from disk (training/resume_state.py): what ``save_resume_state`` writes passes, a
damaged entry is refused in one line before any work."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.errors import CheckpointError
from ddpm_lab.training.resume_state import RESUME_KEY, check_resume_state


def good(world_size: int = 2) -> dict:
    rng = torch.get_rng_state()
    return {
        "shape": {"world_size": world_size, "batch_size": 8, "accumulate_grad_batches": 1},
        "ranks": {
            "rng_cpu": torch.stack([rng] * world_size),
            "loss_history": torch.zeros(world_size, 5, 3),
            "loss_counts": torch.zeros(world_size, 5, dtype=torch.long),
        },
        "loaders": [[{"epoch": 0, "images": 16, "images_per_batch": 16}]] * world_size,
        "validation_cut": False,
    }


def damaged() -> list[dict]:
    cases = []
    for change in (
        lambda s: s["ranks"].update(rng_cpu=torch.zeros(2, 7, dtype=torch.uint8)),  # not a generator state
        lambda s: s["ranks"].update(rng_cpu=s["ranks"]["rng_cpu"].float()),
        lambda s: s["ranks"].pop("loss_counts"),  # a history without its counts
        lambda s: s["ranks"].update(loss_counts=torch.full((2, 5), 4)),  # more losses counted than kept
        lambda s: s["shape"].update(batch_size=0),
        lambda s: s["shape"].update(world_size=True),
        lambda s: s.update(loaders=[[]]),  # one rank's loaders for two ranks
        lambda s: s.update(validation_cut="yes"),
        lambda s: s.update(ranks=[1, 2]),
    ):
        state = good()
        change(state)
        cases.append(state)
    return [*cases, "resume", [good()]]


def test_what_save_resume_state_writes_passes_and_an_old_checkpoint_without_it_too() -> None:
    check_resume_state({RESUME_KEY: good()}, "last.ckpt")
    check_resume_state({RESUME_KEY: good(world_size=1)}, "last.ckpt")
    check_resume_state({}, "last.ckpt")  # written before resume_state existed: generator states alone


@pytest.mark.parametrize("state", damaged())
def test_a_damaged_resume_state_is_refused_in_one_line(state) -> None:
    with pytest.raises(CheckpointError, match=r"^run/last.ckpt: its 'resume_state' entry is damaged") as refused:
        check_resume_state({RESUME_KEY: state}, "run/last.ckpt")
    assert "\n" not in str(refused.value)
