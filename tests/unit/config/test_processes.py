"""``devices=``/``num_nodes=`` of sample and evaluate: checked together before any work; one process starts no
Fabric; a sweep (-m) refuses extra processes, which would each re-run the whole sweep."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ddpm_lab.config import processes
from ddpm_lab.config.processes import Processes, processes_settings, start_ranks
from ddpm_lab.errors import ConfigError


def settings(**values) -> Processes:
    return processes_settings(OmegaConf.create({"device": "cpu", "devices": 1, "num_nodes": 1, **values}))


def test_devices_and_nodes_make_the_world():
    assert settings() == Processes(torch.device("cpu"), 1, 1)
    two = settings(devices=2.0, num_nodes=3)  # integral floats are integers
    assert (two.devices, two.num_nodes, two.world) == (2, 3, 6)


def test_one_process_starts_no_fabric():
    ranks = start_ranks(settings())
    assert (ranks.rank, ranks.world, ranks.device) == (0, 1, torch.device("cpu"))


def test_a_sweep_refuses_extra_processes(monkeypatch):
    monkeypatch.setattr(processes, "_is_multirun", lambda: True)
    assert settings().world == 1  # one process per job is fine
    for extra in ({"devices": 2}, {"num_nodes": 2}):
        with pytest.raises(ConfigError, match=r"multirun \(-m\) runs each job in one process"):
            settings(**extra)
